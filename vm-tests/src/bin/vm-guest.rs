//! The tests that run inside each vm-test guest, on that guest's kernel, as root.
//!
//! They reuse the end-to-end harness (test cgroups, gateway child, loopback servers, probe) and
//! prove what cannot be proven on the host: every program passes this kernel's verifier, the
//! cgroup-mode path works on this kernel, and whole-host mode — attached to the guest's root
//! cgroup, which is safe only here — redirects every process but the gateway and detaches clean.
//! Output ends with one `N passed, M failed` line; the exit status is 0 only if all passed.
use std::{
    net::{IpAddr, SocketAddr},
    panic::{AssertUnwindSafe, catch_unwind},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use ghgate_e2e::{
    Attempts, Gateway, GatewaySpec, TestCgroup, addr, bin, loopback_v4, probe_outside,
    servers::{Kind, Server},
};
use serde_json::Value;

type Test = (&'static str, fn());

const TESTS: &[Test] = &[
    ("verifier_accepts_every_program", verifier_accepts_every_program),
    (
        "cgroup_mode_redirects_with_destination_and_caller",
        cgroup_mode_redirects_with_destination_and_caller,
    ),
    (
        "cgroup_mode_fails_closed_and_restarts_without_bypass",
        cgroup_mode_fails_closed_and_restarts_without_bypass,
    ),
    (
        "whole_host_mode_redirects_everyone_but_the_gateway",
        whole_host_mode_redirects_everyone_but_the_gateway,
    ),
    (
        "a_kernel_without_a_feature_is_refused_in_one_line",
        a_kernel_without_a_feature_is_refused_in_one_line,
    ),
];

fn main() -> ExitCode {
    let filter = std::env::args().nth(1);
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in TESTS {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        println!("vm-test {name} ...");
        let start = Instant::now();
        match catch_unwind(AssertUnwindSafe(test)) {
            Ok(()) => {
                passed += 1;
                println!("vm-test {name} ... ok ({:.1} s)", start.elapsed().as_secs_f64());
            }
            Err(_) => {
                failed += 1;
                println!(
                    "vm-test {name} ... FAILED ({:.1} s)",
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn one(mut v: Vec<Value>) -> Value {
    assert_eq!(v.len(), 1, "expected one probe result: {v:?}");
    v.remove(0)
}

fn spec_for(ip: IpAddr, port: u16) -> GatewaySpec {
    GatewaySpec {
        intercept: vec![(vec!["api.github.test".into()], vec![], vec![port])],
        overrides: vec![("api.github.test".into(), vec![ip.to_string()])],
        ..Default::default()
    }
}

/// Names of loaded programs that are ours, asked of the kernel (not of our pins).
fn ghgate_programs_loaded() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|n| n.starts_with("ghgate_"))
        .collect()
}

fn verifier_accepts_every_program() {
    let out = Command::new(bin("ghgate"))
        .args(["check", "--kernel", "--kernel-only"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check --kernel failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "ghgate_connect4",
        "ghgate_connect6",
        "ghgate_peer4",
        "ghgate_peer6",
        "ghgate_sockops",
    ] {
        assert!(
            stdout.contains(&format!("program {name}: accepted by the verifier")),
            "{name}: {stdout}"
        );
    }
    print!("{stdout}");
}

fn cgroup_mode_redirects_with_destination_and_caller() {
    let cg = TestCgroup::new();
    let v4 = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let v6 = Server::start(addr("[::1]:0"), Kind::Echo);
    let mut spec = spec_for(v4.addr.ip(), v4.addr.port());
    spec.intercept
        .push((vec![], vec!["::1/128".into()], vec![v6.addr.port()]));
    let gw = Gateway::start(&cg, &spec);

    let r = one(gw.probe(&["connect", &v4.addr.to_string()]));
    assert_eq!(
        (r["ok"].clone(), r["proxied"].clone()),
        (true.into(), true.into()),
        "{r}"
    );
    assert_eq!(
        r["peer"],
        v4.addr.to_string(),
        "getpeername shows the original: {r}"
    );
    let r6 = one(gw.probe(&["connect", &v6.addr.to_string()]));
    assert_eq!(
        (r6["ok"].clone(), r6["proxied"].clone()),
        (true.into(), true.into()),
        "{r6}"
    );
    assert_eq!(r6["peer"], v6.addr.to_string());
    let mapped = match v4.addr.ip() {
        IpAddr::V4(ip) => SocketAddr::new(ip.to_ipv6_mapped().into(), v4.addr.port()),
        _ => unreachable!(),
    };
    let rm = one(gw.probe(&["connect", &mapped.to_string()]));
    assert_eq!(rm["proxied"], true, "v4-mapped: {rm}");

    let logs = gw.wait_log("three relays", Duration::from_secs(30), |l| {
        l.iter().filter(|l| l["message"] == "connection relayed").count() == 3
    });
    let first = logs
        .iter()
        .find(|l| l["message"] == "connection relayed")
        .unwrap();
    assert_eq!(first["orig_dst"], v4.addr.to_string(), "{first}");
    assert_eq!(first["tgid"], r["pid"], "{first}");
    assert_eq!(first["comm"], "ghgate-probe", "{first}");
    // Outside the cgroup nothing changes.
    assert_eq!(
        one(probe_outside(&["connect", &v4.addr.to_string()]))["proxied"],
        false
    );
}

fn cgroup_mode_fails_closed_and_restarts_without_bypass() {
    let cg = TestCgroup::new();
    let upstream = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let mut gw = Gateway::start(&cg, &spec_for(upstream.addr.ip(), upstream.addr.port()));
    let (mut client, reader) = gw.probe_in_background(&[
        "connect",
        &upstream.addr.to_string(),
        "--count",
        "100",
        "--interval-ms",
        "50",
    ]);
    std::thread::sleep(Duration::from_millis(800));
    gw.kill9();
    std::thread::sleep(Duration::from_millis(1200));
    gw.spawn();
    assert!(client.wait().unwrap().success());
    let results = reader.join().unwrap();
    assert_eq!(results.len(), 100);
    // Every attempt went through the gateway or was refused while it was down: none bypassed it.
    Attempts::classify(&results).assert_fail_closed();
    // The restarted gateway takes the pinned programs over, and interception resumes. How soon
    // depends on the guest's speed (TCG on a loaded host is 8-50x slower than native), so this
    // waits for the gateway to say it is ready rather than for a fixed time.
    gw.wait_log("the restarted gateway ready", Duration::from_secs(60), |l| {
        l.iter()
            .any(|l| l["message"] == "gateway ready" && l["took_over"] == true)
    });
    let after = one(gw.probe(&["connect", &upstream.addr.to_string()]));
    assert_eq!(after["proxied"], true, "interception did not resume: {after}");
}

fn whole_host_mode_redirects_everyone_but_the_gateway() {
    let cg = TestCgroup::new(); // names the pins; nothing attaches to it in host mode
    let upstream = Server::start(SocketAddr::new(loopback_v4().into(), 0), Kind::Echo);
    let mut spec = spec_for(upstream.addr.ip(), upstream.addr.port());
    spec.host_mode = true;
    let mut gw = Gateway::start(&cg, &spec);

    // A client anywhere in the guest (here: the root cgroup) is redirected.
    let r = one(probe_outside(&["connect", &upstream.addr.to_string()]));
    assert_eq!(
        (r["ok"].clone(), r["proxied"].clone()),
        (true.into(), true.into()),
        "{r}"
    );
    assert_eq!(r["peer"], upstream.addr.to_string());
    gw.assert_exactly_one_relay(Duration::from_secs(30));
    // The gateway's own upstream connection was not redirected back to itself.
    assert_eq!(
        upstream.accepted(),
        1,
        "exactly the relayed connection reached the upstream"
    );
    let status = gw.status();
    assert!(
        status["counters"]["self_excluded"].as_u64().unwrap() >= 1,
        "{status}"
    );

    // Detaching is refused while the gateway runs (it would attach its programs again).
    let out = gw.ghgate(&["detach"]);
    assert!(!out.status.success(), "detach while the gateway runs");
    gw.terminate();
    let out = gw.ghgate(&["detach"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut left = ghgate_programs_loaded();
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = ghgate_programs_loaded();
    }
    assert!(left.is_empty(), "programs still loaded after detach: {left:?}");
    let r = one(probe_outside(&["connect", &upstream.addr.to_string()]));
    assert_eq!(
        (r["ok"].clone(), r["proxied"].clone()),
        (true.into(), false.into()),
        "after detach: {r}"
    );
}

/// What a kernel lacking a feature looks like to ghgate, made with a seccomp filter on the
/// gateway process alone: `bpf(BPF_PROG_LOAD)` fails as on a kernel without these program types
/// (EINVAL), or `bpf()` is missing altogether (ENOSYS, a kernel built without
/// CONFIG_BPF_SYSCALL). Either way ghgate must say so in one line and exit before attaching
/// anything.
fn a_kernel_without_a_feature_is_refused_in_one_line() {
    for (lacking, errno, expect) in [
        (
            "program loading",
            libc::EINVAL,
            "this kernel cannot run ghgate: program ghgate_",
        ),
        (
            "the bpf() system call",
            libc::ENOSYS,
            "this kernel has no bpf() system call",
        ),
    ] {
        let cg = TestCgroup::new();
        let dir = std::env::temp_dir().join(format!("ghgate-lacking-{}", cg.name));
        std::fs::create_dir_all(&dir).unwrap();
        let pin_dir = format!("/sys/fs/bpf/{}", cg.name);
        let config = dir.join("ghgate.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\n[redirect]\ncgroup = \"{}\"\npin_dir = \"{pin_dir}\"\n\n[[intercept]]\ncidrs = [\"127.0.0.1/32\"]\nports = [443]\n",
                dir.join("state").display(),
                cg.name
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin("ghgate"));
        cmd.args(["run", "--config"]).arg(&config);
        seccomp::fail_bpf(&mut cmd, errno, errno == libc::EINVAL);
        let started = Instant::now();
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{lacking}: ghgate ran: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{lacking}: slow to refuse"
        );
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("ghgate: error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{lacking}: one line says why: {stderr}");
        assert!(errors[0].contains(expect), "{lacking}: {stderr}");
        assert!(
            ghgate_programs_loaded().is_empty(),
            "{lacking}: programs were left loaded"
        );
        let links = std::path::Path::new(&pin_dir).join("links");
        assert!(
            !links.exists() || std::fs::read_dir(&links).unwrap().next().is_none(),
            "{lacking}: links were pinned"
        );
        println!("{lacking} refused: {}", errors[0]);
        let _ = std::fs::remove_dir_all(&pin_dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A seccomp filter for one child process.
mod seccomp {
    use std::os::unix::process::CommandExt as _;

    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const NR_BPF: u32 = 321;
    const BPF_PROG_LOAD: u32 = 5;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    // Classic BPF opcodes.
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;

    fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
        libc::sock_filter { code, jt, jf, k }
    }

    /// In `cmd`'s child: `bpf()` fails with `errno`, every call or (with `loads_only`) only
    /// BPF_PROG_LOAD (maps can still be made, as on a kernel that lacks a program type).
    pub fn fail_bpf(cmd: &mut std::process::Command, errno: i32, loads_only: bool) {
        let fail = RET_ERRNO | errno as u32;
        let filter = vec![
            op(LD_W_ABS, 0, 0, 4), // arch
            op(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
            op(RET_K, 0, 0, RET_ALLOW),
            op(LD_W_ABS, 0, 0, 0), // syscall number
            op(JEQ_K, 1, 0, NR_BPF),
            op(RET_K, 0, 0, RET_ALLOW),
            op(LD_W_ABS, 0, 0, 16), // the low word of the first argument: the command
            op(JEQ_K, 1, 0, BPF_PROG_LOAD),
            op(RET_K, 0, 0, if loads_only { RET_ALLOW } else { fail }),
            op(RET_K, 0, 0, fail),
        ];
        // SAFETY: between fork and exec only async-signal-safe calls are made (two prctls), on
        // a filter that outlives them (moved into the closure).
        #[allow(
            unsafe_code,
            reason = "a seccomp filter installed between fork and exec, which only pre_exec allows"
        )]
        unsafe {
            cmd.pre_exec(move || {
                let prog = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &prog as *const libc::sock_fprog,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}
