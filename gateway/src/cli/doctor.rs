//! `ghgate doctor`: is this host actually protected? One line per check, exit 1 if any fails.
//!
//! The CA checks run real clients (curl, git, node, python3, and a Go program when Go is
//! installed) in a governed cgroup, each doing a TLS handshake through the redirect and the
//! gateway to the self-test name ([`crate::selftest`]), with the environment a runner's jobs get
//! (the `.env` files install edited, or `--env-file`). Nothing leaves loopback.
//!
//! Doctor reads; the only things it creates are a probe file in the store (removed at once) and,
//! when the governed cgroup is not the whole host, a child cgroup for its clients (removed after).
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use super::ConfigArg;
use crate::{
    config::{CgroupTarget, Config},
    install, record,
    redirect::{self, Pins, cgroup, scopes, watch},
    runner, selftest,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    /// An environment file (KEY=VALUE lines, as a runner's `.env`) the clients run with; default:
    /// the `.env` files `ghgate install` edited. Repeatable.
    #[arg(long = "env-file", value_name = "FILE")]
    env_files: Vec<PathBuf>,
    /// The least free space the store must have, in bytes (suffixes K, M, G).
    #[arg(long, value_name = "BYTES", default_value = "1G", value_parser = parse_bytes)]
    min_free: u64,
    /// How long each client may take.
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    client_timeout: u64,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        Some((i, 'T' | 't')) => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a number of bytes (e.g. 500M, 2G)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Fail,
    /// Not checked, and why is in the line (not a failure).
    Skip,
}

struct Check {
    name: &'static str,
    status: Status,
    detail: String,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Ok,
        detail: detail.into(),
    }
}
fn fail(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Fail,
        detail: detail.into(),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    redirect::check_privileges("ghgate doctor")?;
    let pins = Pins::new(&config.redirect.pin_dir);
    let mut checks = Vec::new();
    checks.extend(programs(&config, &pins));
    let state = watch::load(&config.state_dir);
    checks.push(listener(&config, state.as_ref()));
    checks.push(open_files(state.as_ref()));
    let metrics = fs::read_to_string(config.state_dir.join(super::run::METRICS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    checks.extend(intercept_set(&config, metrics.as_ref()));
    checks.extend(clients(&config, &args));
    checks.push(store(&config, args.min_free));
    checks.push(clock());
    checks.push(recorder_key(&config));
    checks.push(gaps(state.as_ref()));
    let mut failed = 0;
    for c in &checks {
        let mark = match c.status {
            Status::Ok => "ok  ",
            Status::Fail => {
                failed += 1;
                "FAIL"
            }
            Status::Skip => "skip",
        };
        println!("{mark} {:<16} {}", c.name, c.detail);
    }
    if failed == 0 {
        println!("all {} checks passed", checks.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{failed} of {} checks failed", checks.len());
        Ok(ExitCode::from(1))
    }
}

/// The programs are attached where the config says; container scopes that exist are attached;
/// no Actions runner runs outside the governed cgroup.
fn programs(config: &Config, pins: &Pins) -> Vec<Check> {
    let mut out = Vec::new();
    let mount = match cgroup::cgroup2_mount() {
        Ok(m) => m,
        Err(e) => return vec![fail("programs", format!("{e:#}"))],
    };
    let dir = match &config.redirect.cgroup {
        CgroupTarget::Host => mount.clone(),
        CgroupTarget::Path(p) => mount.join(p),
    };
    let links = pins.links();
    if !dir.join("cgroup.procs").exists() {
        out.push(fail(
            "programs",
            format!("the governed cgroup {} does not exist", dir.display()),
        ));
    } else if !pins.attached() {
        out.push(fail(
            "programs",
            format!(
                "not attached: {} of {} program links pinned in {} (start the gateway: systemctl start ghgate)",
                links.len(),
                gateway_common::prog_names::ALL.len(),
                pins.links_dir().display()
            ),
        ));
    } else {
        out.push(ok(
            "programs",
            format!("{} programs attached to {}", links.len(), dir.display()),
        ));
    }
    let containers = &config.redirect.containers;
    if containers.enabled {
        let wanted = scopes::wanted(&mount, containers);
        let attached = scopes::attached(pins);
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(rel, _)| !attached.iter().any(|(a, whole)| a == rel && *whole))
            .map(|(rel, _)| rel.display().to_string())
            .collect();
        out.push(if missing.is_empty() {
            ok(
                "containers",
                format!("{} container scopes, every one attached", wanted.len()),
            )
        } else {
            fail("containers", format!("not attached: {}", missing.join(", ")))
        });
    }
    let runners = runner::running_in(&mount);
    let outside: Vec<String> = runners
        .iter()
        .filter(|r| match &config.redirect.cgroup {
            CgroupTarget::Host => false,
            CgroupTarget::Path(p) => !r.cgroup.starts_with(p),
        })
        .map(|r| format!("{} (in {})", r.unit, r.cgroup.display()))
        .collect();
    out.push(if runners.is_empty() {
        Check {
            name: "runners",
            status: Status::Skip,
            detail: "no Actions runner service is running".into(),
        }
    } else if outside.is_empty() {
        ok(
            "runners",
            format!("{} runner services, every one governed", runners.len()),
        )
    } else {
        fail(
            "runners",
            format!(
                "not governed: {} (restart them so that they run in {})",
                outside.join(", "),
                config.redirect.cgroup
            ),
        )
    });
    out
}

/// The gateway runs, beats, and owns the listening socket the kernel redirects to.
fn listener(config: &Config, state: Option<&watch::State>) -> Check {
    let Some(s) = state else {
        return fail("listener", "no gateway has run here (no enforcement state file)");
    };
    let beat_age = record::model::now_micros().saturating_sub(s.alive_at);
    if s.stopped_at.is_some() || !Path::new(&format!("/proc/{}", s.pid)).exists() {
        return fail("listener", format!("the gateway (pid {}) is not running", s.pid));
    }
    if beat_age > 4 * watch::BEAT.as_micros() as u64 {
        return fail(
            "listener",
            format!(
                "the gateway (pid {}) has not beaten for {} s",
                s.pid,
                beat_age / 1_000_000
            ),
        );
    }
    match listening_inode(config.listen.ipv4) {
        None => fail("listener", format!("nothing listens on {}", config.listen.ipv4)),
        Some(inode) if owns_socket(s.pid, inode) => ok(
            "listener",
            format!("{} is the gateway's (pid {})", config.listen.ipv4, s.pid),
        ),
        Some(_) => fail(
            "listener",
            format!(
                "{} is held by another process than the gateway (pid {})",
                config.listen.ipv4, s.pid
            ),
        ),
    }
}

/// Below this limit of open files the gateway's is too low: one per intercepted connection.
const MIN_OPEN_FILES: u64 = 8192;

/// The running gateway's open files against its limit (one per intercepted connection): a low
/// limit, or one nearly reached, leaves new connections waiting in the listen queue.
fn open_files(state: Option<&watch::State>) -> Check {
    const NAME: &str = "open files";
    let Some(s) = state.filter(|s| s.stopped_at.is_none()) else {
        return Check {
            name: NAME,
            status: Status::Skip,
            detail: "no gateway is running".into(),
        };
    };
    let limit = fs::read_to_string(format!("/proc/{}/limits", s.pid))
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("Max open files"))?.to_owned();
            line.split_whitespace().nth(3)?.parse::<u64>().ok()
        });
    let open = fs::read_dir(format!("/proc/{}/fd", s.pid)).map(|d| d.count() as u64);
    match (open, limit) {
        (Ok(open), Some(limit)) if limit < MIN_OPEN_FILES => fail(
            NAME,
            format!(
                "the gateway (pid {}) may open only {limit} files, one per intercepted connection ({open} open): raise the hard limit (LimitNOFILE) to {MIN_OPEN_FILES} or more",
                s.pid
            ),
        ),
        (Ok(open), Some(limit)) if open.saturating_mul(10) >= limit.saturating_mul(9) => fail(
            NAME,
            format!(
                "the gateway (pid {}) has {open} of its {limit} files open: new connections will wait",
                s.pid
            ),
        ),
        (Ok(open), Some(limit)) => ok(NAME, format!("{open} of {limit} open (pid {})", s.pid)),
        _ => fail(
            NAME,
            format!("cannot read the gateway's (pid {}) limits and open files", s.pid),
        ),
    }
}

/// The inode of the TCP socket listening on `addr` (IPv4), from /proc/net/tcp.
fn listening_inode(addr: std::net::SocketAddr) -> Option<u64> {
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), addr.port());
    let text = fs::read_to_string("/proc/net/tcp").ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A"))
            .then(|| f.get(9)?.parse().ok())
            .flatten()
    })
}

fn owns_socket(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok())
            .any(|e| fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want))
    })
}

/// GitHub's ranges are recent (or refreshing is off, said so) and every name has an answer.
fn intercept_set(config: &Config, metrics: Option<&serde_json::Value>) -> Vec<Check> {
    let Some(m) = metrics else {
        return vec![fail(
            "intercept set",
            "the gateway has written no metrics file (is it running?)",
        )];
    };
    let mut out = Vec::new();
    if config.github.enabled() {
        let r = &m["github_ranges"];
        let as_of = r["as_of"].as_str().unwrap_or("unknown");
        let age = r["as_of"]
            .as_str()
            .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
            .map(|t| (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0) as u64);
        let refresh = config.github.refresh_secs;
        let error = r["last_refresh_error"].as_str();
        let line = format!(
            "{} prefixes, {} of {as_of}{}",
            r["prefixes"],
            r["source"].as_str().unwrap_or("?"),
            age.map(|a| format!(" ({} old)", human_age(a)))
                .unwrap_or_default()
        );
        // Stale: older than two refresh intervals and a day, or the last refresh failed.
        let stale = refresh > 0 && age.is_none_or(|a| a > 2 * refresh + 86_400);
        out.push(match (error, stale) {
            (Some(e), _) => fail("github ranges", format!("{line}; the last refresh failed: {e}")),
            (None, true) => fail("github ranges", format!("{line}: stale")),
            (None, false) if refresh == 0 => ok(
                "github ranges",
                format!("{line}; never refreshed (github.refresh_secs = 0)"),
            ),
            (None, false) => ok("github ranges", line),
        });
    }
    let n = &m["names"];
    let unresolved: Vec<&str> = n["unresolved"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    out.push(if unresolved.is_empty() {
        ok(
            "names",
            format!("{} intercepted names, every one resolved", n["total"]),
        )
    } else {
        fail("names", format!("no answer yet for: {}", unresolved.join(", ")))
    });
    out
}

fn human_age(secs: u64) -> String {
    match secs {
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// The clients a job would run, each doing a TLS handshake through the gateway to the
/// self-test name.
fn clients(config: &Config, args: &Args) -> Vec<Check> {
    let env = match job_env(&args.env_files) {
        Ok(env) => env,
        Err(e) => return vec![fail("ca", format!("{e:#}"))],
    };
    let port = selftest::port(&config.tls.ports);
    let name = selftest::NAME;
    let addr = selftest::ADDR;
    let url = format!("https://{name}:{port}/");
    let place = match Place::new(config) {
        Ok(p) => p,
        Err(e) => {
            return vec![fail(
                "ca",
                format!("cannot place the clients in the governed cgroup: {e:#}"),
            )];
        }
    };
    let mut out = Vec::new();
    let resolve = format!("{name}:{port}:{addr}");
    let node_script = format!(
        "const https=require('https');https.get({{host:'{addr}',port:{port},servername:'{name}',path:'/',headers:{{host:'{name}'}}}},r=>{{let b='';r.on('data',d=>b+=d);r.on('end',()=>{{process.stdout.write(b)}})}}).on('error',e=>{{console.error(e.message);process.exit(1)}})"
    );
    // As requests would: REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, else certifi's bundle (if
    // installed), else the system's.
    let python_script = format!(
        "import os,socket,ssl\ncafile=os.environ.get('REQUESTS_CA_BUNDLE') or os.environ.get('CURL_CA_BUNDLE')\nif not cafile:\n    try:\n        import certifi; cafile=certifi.where()\n    except ImportError:\n        pass\nctx=ssl.create_default_context(cafile=cafile)\nwith socket.create_connection(('{addr}',{port}),timeout=10) as s:\n    with ctx.wrap_socket(s,server_hostname='{name}') as t:\n        t.sendall(b'GET / HTTP/1.1\\r\\nHost: {name}\\r\\nConnection: close\\r\\n\\r\\n')\n        b=b''\n        while True:\n            d=t.recv(4096)\n            if not d: break\n            b+=d\n        print(b.decode(errors='replace'))\n"
    );
    let cases: Vec<(&'static str, Vec<String>)> = vec![
        (
            "ca: curl",
            vec![
                "curl".into(),
                "-sS".into(),
                "--max-time".into(),
                "10".into(),
                "--resolve".into(),
                resolve.clone(),
                url.clone(),
            ],
        ),
        (
            "ca: git",
            vec![
                "git".into(),
                "-c".into(),
                format!("http.curloptResolve={resolve}"),
                "ls-remote".into(),
                format!("https://{name}:{port}{}", selftest::GIT_PATH),
            ],
        ),
        ("ca: node", vec!["node".into(), "-e".into(), node_script]),
        ("ca: python3", vec!["python3".into(), "-c".into(), python_script]),
    ];
    let timeout = Duration::from_secs(args.client_timeout);
    for (check, argv) in cases {
        out.push(run_client(check, &argv, &env, &place, timeout, |stdout| {
            check != "ca: git" && !stdout.contains(selftest::BODY)
        }));
    }
    out.push(go_client(&env, &place, &url, &resolve, timeout));
    out
}

/// Where the clients run: in whole-host mode anywhere; else in a child cgroup of the governed
/// one (programs attached to a cgroup govern its descendants), removed on drop.
struct Place {
    cgroup: Option<PathBuf>,
}

impl Place {
    fn new(config: &Config) -> anyhow::Result<Self> {
        match &config.redirect.cgroup {
            CgroupTarget::Host => Ok(Self { cgroup: None }),
            target => {
                let parent = cgroup::target_dir(target)?;
                let dir = parent.join(format!("ghgate-doctor-{}", std::process::id()));
                fs::create_dir_all(&dir)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
                Ok(Self { cgroup: Some(dir) })
            }
        }
    }

    fn command(&self, argv: &[String]) -> Command {
        match &self.cgroup {
            None => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
            Some(dir) => {
                // Enter the cgroup, then become the client.
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
                    .arg(dir)
                    .args(argv);
                c
            }
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(dir) = &self.cgroup {
            for _ in 0..50 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("warning: could not remove {}", dir.display());
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn run_client(
    check: &'static str,
    argv: &[String],
    env: &BTreeMap<String, String>,
    place: &Place,
    timeout: Duration,
    wrong_answer: impl Fn(&str) -> bool,
) -> Check {
    if !on_path(&argv[0]) {
        return fail(check, format!("{} is not installed", argv[0]));
    }
    let mut cmd = place.command(argv);
    cmd.envs(env)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match output_within(cmd, timeout) {
        Err(e) => fail(check, format!("{e:#}")),
        Ok((status, stdout, stderr)) => {
            let stdout = String::from_utf8_lossy(&stdout);
            let stderr = String::from_utf8_lossy(&stderr);
            let last = reason(&stderr);
            if status.is_some_and(|s| s.success()) && !wrong_answer(&stdout) {
                ok(
                    check,
                    format!("TLS through the gateway to {} verified", selftest::NAME),
                )
            } else if status.is_none() {
                fail(check, format!("no answer within {} s", timeout.as_secs()))
            } else {
                fail(
                    check,
                    format!(
                        "handshake or request failed: {}",
                        if last.is_empty() { "no message" } else { last }
                    ),
                )
            }
        }
    }
}

/// What a failed client said: curl's `curl: (N) …` line (the lines after it are advice), else
/// the last line (git's `fatal:`, a traceback's exception).
fn reason(stderr: &str) -> &str {
    let mut lines = stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    lines
        .clone()
        .find(|l| l.starts_with("curl: ("))
        .or_else(|| lines.next_back())
        .unwrap_or("")
}

/// A Go client, when Go is installed: a small program built and run like a job's.
fn go_client(
    env: &BTreeMap<String, String>,
    place: &Place,
    url: &str,
    resolve: &str,
    timeout: Duration,
) -> Check {
    if !on_path("go") {
        return Check {
            name: "ca: go",
            status: Status::Skip,
            detail: "go is not installed: no Go client checked".into(),
        };
    }
    let dir = TempDir(std::env::temp_dir().join(format!("ghgate-doctor-go-{}", std::process::id())));
    if fs::create_dir_all(dir.path()).is_err() {
        return fail("ca: go", "cannot make a temporary directory");
    }
    let addr = resolve.rsplit(':').next().unwrap_or_default();
    let source = format!(
        "package main\nimport (\"context\";\"fmt\";\"io\";\"net\";\"net/http\";\"os\")\nfunc main() {{\n d := &net.Dialer{{}}\n tr := &http.Transport{{DialContext: func(ctx context.Context, n, a string) (net.Conn, error) {{ _, p, _ := net.SplitHostPort(a); return d.DialContext(ctx, n, net.JoinHostPort(\"{addr}\", p)) }}}}\n r, err := (&http.Client{{Transport: tr}}).Get(\"{url}\")\n if err != nil {{ fmt.Fprintln(os.Stderr, err); os.Exit(1) }}\n b, _ := io.ReadAll(r.Body)\n fmt.Print(string(b))\n}}\n"
    );
    let main = dir.path().join("main.go");
    if fs::File::create(&main)
        .and_then(|mut f| f.write_all(source.as_bytes()))
        .is_err()
    {
        return fail("ca: go", "cannot write the Go program");
    }
    let argv = vec!["go".to_owned(), "run".to_owned(), main.display().to_string()];
    run_client(
        "ca: go",
        &argv,
        env,
        place,
        timeout.max(Duration::from_secs(120)),
        |stdout| !stdout.contains(selftest::BODY),
    )
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs a command, killing it past `timeout`; (status, stdout, stderr), status None on timeout.
fn output_within(
    mut cmd: Command,
    timeout: Duration,
) -> anyhow::Result<(Option<std::process::ExitStatus>, Vec<u8>, Vec<u8>)> {
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let read = |r: Option<std::process::ChildStdout>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = std::io::Read::read_to_end(&mut r, &mut buf);
            }
            buf
        })
    };
    let out = read(stdout);
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = stderr {
            let _ = std::io::Read::read_to_end(&mut r, &mut buf);
        }
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((
        status,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    ))
}

/// The environment the clients get: the given files, else those install edited.
fn job_env(files: &[PathBuf]) -> anyhow::Result<BTreeMap<String, String>> {
    let files: Vec<PathBuf> = if files.is_empty() {
        install::read_manifest(Path::new("/"))
            .map(|m| m.env_files)
            .unwrap_or_default()
    } else {
        files.to_vec()
    };
    let mut env = BTreeMap::new();
    for f in files {
        let text = fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=')
                && !k.trim().is_empty()
                && !k.trim_start().starts_with('#')
            {
                env.insert(k.trim().to_owned(), v.to_owned());
            }
        }
    }
    Ok(env)
}

/// The store takes a write, and has at least `min_free` bytes left.
fn store(config: &Config, min_free: u64) -> Check {
    let dir = config.record_dir();
    if !config.record.enabled {
        return Check {
            name: "store",
            status: Status::Skip,
            detail: "recording is off (record.enabled = false)".into(),
        };
    }
    let probe = dir.join(format!(".doctor-probe-{}", std::process::id()));
    let written = fs::File::create(&probe)
        .and_then(|mut f| {
            f.write_all(b"ghgate doctor")?;
            f.sync_all()
        })
        .map(|()| {
            let _ = fs::remove_file(&probe);
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&probe);
        return fail("store", format!("cannot write in {}: {e}", dir.display()));
    }
    match crate::sys::disk_space(&dir) {
        Err(e) => fail("store", format!("cannot stat {}: {e}", dir.display())),
        Ok((free, total)) => {
            let line = format!(
                "{} writable, {} free of {} (at least {} wanted)",
                dir.display(),
                bytes(free),
                bytes(total),
                bytes(min_free)
            );
            if free < min_free {
                fail("store", format!("{line}: nearly full"))
            } else {
                ok("store", line)
            }
        }
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The clock is synchronised (records carry its times): systemd's view, else the kernel's.
fn clock() -> Check {
    if let Ok(out) = Command::new("timedatectl")
        .args(["show", "--property=NTPSynchronized", "--value"])
        .stderr(Stdio::null())
        .output()
        && out.status.success()
    {
        return match String::from_utf8_lossy(&out.stdout).trim() {
            "yes" => ok("clock", "synchronised (timedatectl)"),
            other => fail(
                "clock",
                format!(
                    "not synchronised (timedatectl NTPSynchronized={other}): enable NTP (timedatectl set-ntp true)"
                ),
            ),
        };
    }
    match crate::sys::clock_synced() {
        Some(true) => ok("clock", "synchronised (adjtimex)"),
        Some(false) => fail(
            "clock",
            "not synchronised (adjtimex: STA_UNSYNC): run an NTP client (systemd-timesyncd, chrony)",
        ),
        None => fail("clock", "cannot tell whether the clock is synchronised"),
    }
}

/// The recorder's signing key exists and only root can read it.
fn recorder_key(config: &Config) -> Check {
    use std::os::unix::fs::MetadataExt as _;
    if !config.record.enabled {
        return Check {
            name: "recorder key",
            status: Status::Skip,
            detail: "recording is off".into(),
        };
    }
    let path = ghgate_record::store::key_path(&config.record_dir());
    match fs::metadata(&path) {
        Err(e) => fail("recorder key", format!("{}: {e}", path.display())),
        Ok(m) if m.uid() != 0 => fail(
            "recorder key",
            format!("{} belongs to uid {}, not root", path.display(), m.uid()),
        ),
        Ok(m) if m.mode() & 0o077 != 0 => fail(
            "recorder key",
            format!(
                "{} is readable by others (mode {:04o}): chmod 600 it",
                path.display(),
                m.mode() & 0o7777
            ),
        ),
        Ok(m) => ok(
            "recorder key",
            format!("{} (mode {:04o}, root's)", path.display(), m.mode() & 0o7777),
        ),
    }
}

/// Any enforcement gap since the gateway last started.
fn gaps(state: Option<&watch::State>) -> Check {
    let Some(s) = state else {
        return fail("gaps", "no gateway has run here");
    };
    let since: Vec<&crate::record::model::EnforcementGap> =
        s.gaps.iter().filter(|g| g.at >= s.started_at).collect();
    let started = record::model::rfc3339(s.started_at);
    if since.is_empty() {
        return ok("gaps", format!("none since the gateway started at {started}"));
    }
    let lines: Vec<String> = since
        .iter()
        .map(|g| {
            format!(
                "{:?} from {} ({}){}",
                g.kind,
                record::model::rfc3339(g.since),
                watch::span(g),
                if watch::lost_mediation(g) {
                    ", mediation LOST"
                } else {
                    ", fail-closed"
                }
            )
        })
        .collect();
    if since.iter().any(|g| watch::lost_mediation(g)) {
        fail(
            "gaps",
            format!("since the start at {started}: {}", lines.join("; ")),
        )
    } else {
        ok(
            "gaps",
            format!(
                "none lost mediation since the start at {started} ({})",
                lines.join("; ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_clients_reason_is_its_error_not_its_advice() {
        let curl = "curl: (60) SSL certificate problem: self-signed certificate in certificate chain\nMore details here: https://curl.se/docs/sslcerts.html\n\ncurl failed to verify the legitimacy of the server and therefore could not\nestablish a secure connection to it. To learn more about this situation and\nhow to fix it, please visit the web page mentioned above.\n";
        assert_eq!(
            reason(curl),
            "curl: (60) SSL certificate problem: self-signed certificate in certificate chain"
        );
        assert_eq!(
            reason("Traceback (most recent call last):\n  ...\nssl.SSLCertVerificationError: x\n\n"),
            "ssl.SSLCertVerificationError: x"
        );
        assert_eq!(reason(""), "");
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("500m"), Ok(500 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }

    #[test]
    fn env_files_are_read_as_the_runner_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(".env");
        fs::write(
            &f,
            "LANG=C.UTF-8\n# ghgate: begin (a comment)\nSSL_CERT_FILE=/b.pem\nA=x=y\n\n",
        )
        .unwrap();
        let env = job_env(&[f]).unwrap();
        assert_eq!(env.get("SSL_CERT_FILE").map(String::as_str), Some("/b.pem"));
        assert_eq!(env.get("A").map(String::as_str), Some("x=y"));
        assert_eq!(env.len(), 3);
    }
}
