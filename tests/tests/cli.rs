//! The command line's answers to bad input: one line saying what and how to fix, non-zero exit,
//! and nothing attached.
use std::{fs, process::Command};

use ghgate_e2e::{Gateway, GatewaySpec, TestCgroup, bin, privileged};

fn config_file(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let p = dir.path().join("c.toml");
    fs::write(&p, text).unwrap();
    p
}

fn ghgate(args: &[&str], config: &std::path::Path) -> (i32, String, String) {
    // `--config` goes right after the subcommand, before any `--`.
    let out = Command::new(bin("ghgate"))
        .arg(args[0])
        .arg("--config")
        .arg(config)
        .args(&args[1..])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got:\n{stderr}");
    assert!(lines[0].starts_with("ghgate: error: "), "{stderr}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {stderr}");
}

const GOOD: &str = "[redirect]\ncgroup = \"ghgate-test-cli\"\npin_dir = \"/sys/fs/bpf/ghgate-test-cli\"\n\
                    [[intercept]]\ncidrs = [\"127.0.0.9/32\"]\nports = [9]\n";

#[test]
fn unknown_config_keys_are_named_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        &dir,
        &GOOD.replace("[[intercept]]", "[listen]\nport = 1\n[[intercept]]"),
    );
    for cmd in [&["check"][..], &["run"], &["status"], &["exec", "--", "true"]] {
        let (code, _, stderr) = ghgate(cmd, &cfg);
        assert_eq!(code, 2, "{cmd:?}: {stderr}");
        assert_one_line_error(&stderr, "unknown field `port`");
    }
}

#[test]
fn invalid_values_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(&dir, &GOOD.replace("127.0.0.9/32", "127.0.0.9/33"));
    let (code, _, stderr) = ghgate(&["check"], &cfg);
    assert_eq!(code, 2);
    assert_one_line_error(&stderr, "cidrs");
    let cfg = config_file(
        &dir,
        &GOOD.replace("ports = [9]", "ports = [9]\nhosts = [\"*.github.com\"]"),
    );
    let (code, _, stderr) = ghgate(&["check"], &cfg);
    assert_eq!(code, 2);
    assert_one_line_error(&stderr, "`intercept[0].hosts[0]`");
}

#[test]
fn check_prints_the_resolved_intercept_set() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace(
        "cidrs = [\"127.0.0.9/32\"]",
        "hosts = [\"api.github.test\"]\ncidrs = [\"::1/128\"]",
    ) + "[dns.overrides]\n\"api.github.test\" = [\"127.0.0.7\", \"::2\"]\n";
    let cfg = config_file(&dir, &text);
    let (code, stdout, stderr) = ghgate(&["check"], &cfg);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("host api.github.test: 127.0.0.7 ::2"), "{stdout}");
    for entry in ["127.0.0.7/32:9", "[::1/128]:9", "[::2/128]:9"] {
        assert!(
            stdout.lines().any(|l| l.trim() == entry),
            "{entry} missing:\n{stdout}"
        );
    }
}

#[test]
fn missing_privileges_are_one_line_errors() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(&dir, GOOD);
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for cmd in ["run", "detach", "status"] {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(bin("ghgate"))
            .args([cmd, "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {stderr}");
        assert_one_line_error(&stderr, "needs root");
    }
    assert!(
        !std::path::Path::new("/sys/fs/bpf/ghgate-test-cli").exists(),
        "nothing may be pinned"
    );
}

#[test]
fn unreachable_cgroup_path_is_a_one_line_error() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let dir = tempfile::tempdir().unwrap();
    // A cgroup "below" a file cannot exist.
    let text = GOOD
        .replace(
            "ghgate-test-cli\"\npin_dir",
            &format!("{}/cgroup.procs/clients\"\npin_dir", cg.name),
        )
        .replace("/sys/fs/bpf/ghgate-test-cli", &format!("/sys/fs/bpf/{}", cg.name));
    let cfg = config_file(&dir, &text);
    let (code, _, stderr) = ghgate(&["run"], &cfg);
    assert_eq!(code, 1, "{stderr}");
    assert_one_line_error(&stderr, "cannot create cgroup");
    assert!(
        !std::path::Path::new(&format!("/sys/fs/bpf/{}", cg.name)).exists(),
        "nothing may be pinned"
    );
}

#[test]
fn exec_refuses_when_nothing_is_attached_and_detach_is_idempotent() {
    if !privileged() {
        return;
    }
    let cg = TestCgroup::new();
    let mut gw = Gateway::start(
        &cg,
        &GatewaySpec {
            intercept: vec![(vec![], vec!["127.0.0.9/32".into()], vec![9])],
            ..Default::default()
        },
    );
    // A running gateway would attach its programs again at once: detach refuses.
    let (code, _, stderr) = ghgate(&["detach"], &gw.config);
    assert_eq!(code, 1);
    assert_one_line_error(&stderr, "is running and would attach its programs again");
    assert!(gw.status()["attached"] == true);
    gw.terminate();
    let out = gw.ghgate(&["detach"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("detached 11 program links"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    ghgate_e2e::assert_cgroup_clean(&cg.dir).unwrap();
    let (code, _, stderr) = ghgate(&["exec", "--", "true"], &gw.config);
    assert_eq!(code, 1);
    assert_one_line_error(&stderr, "ghgate is not attached");
    let out = gw.ghgate(&["detach"]);
    assert!(
        out.status.success(),
        "second detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing attached"));
}
