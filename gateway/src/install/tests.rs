//! The install plan applied for real under a temporary root: what it writes, with which modes,
//! that a second run changes nothing, and that uninstall takes back everything it added.
use std::{fs, os::unix::fs::PermissionsExt as _, path::Path};

use super::*;

const RUNNER_UNIT: &str = "actions.runner.octo-a.r1.service";

/// A root that looks like a Debian runner host: a trust store, a runner unit, its `.env`.
fn debian_runner_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(under(r, paths::DEBIAN_ANCHORS)).unwrap();
    fs::create_dir_all(under(r, paths::UNIT_DIR)).unwrap();
    fs::write(
        under(r, paths::UNIT_DIR).join(RUNNER_UNIT),
        "[Unit]\nDescription=GitHub Actions Runner (octo-a.r1)\n[Service]\nExecStart=/home/runner/a/runsvc.sh\nUser=runner\nWorkingDirectory=/home/runner/a\n",
    )
    .unwrap();
    fs::create_dir_all(under(r, "/home/runner/a")).unwrap();
    fs::write(
        under(r, "/home/runner/a/.env"),
        "LANG=C.UTF-8\nJAVA_HOME=/usr/lib/jvm/x\n",
    )
    .unwrap();
    fs::write(r.join("ghgate-binary"), b"\x7fELF not really").unwrap();
    root
}

fn request(root: &Path, mode: Mode) -> Request {
    Request {
        root: root.to_path_buf(),
        mode,
        binary: root.join("ghgate-binary"),
        containers: true,
        runner_dirs: Vec::new(),
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn changed(done: &[(String, Outcome)]) -> Vec<&str> {
    done.iter()
        .filter(|(_, o)| *o == Outcome::Changed)
        .map(|(l, _)| l.as_str())
        .collect()
}

#[test]
fn the_unit_is_hardened_and_starts_before_the_runners() {
    let text = unit(paths::BINARY, paths::CONFIG, &[RUNNER_UNIT.to_owned()]);
    for line in [
        "ExecStart=/usr/local/bin/ghgate run --config /etc/ghgate/ghgate.toml",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_RESOURCE CAP_SYS_PTRACE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=ghgate",
        "StateDirectoryMode=0700",
        "RuntimeDirectory=ghgate",
        "RuntimeDirectoryMode=0700",
        "Restart=on-failure",
        "Before=actions.runner.octo-a.r1.service",
        "WantedBy=multi-user.target",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    // Nothing grants more than the bounding set: no ambient capabilities, no setuid helpers.
    assert!(!text.contains("AmbientCapabilities"), "{text}");
    assert!(!text.contains("CAP_DAC_OVERRIDE"), "{text}");
}

/// `systemd-analyze verify` on the unit, the slice and a runner with the drop-in, where
/// systemd-analyze is installed.
#[test]
fn systemd_analyze_verifies_the_units() {
    let Ok(analyze) = which("systemd-analyze") else {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true but systemd-analyze is not installed"
        );
        eprintln!("skipping: systemd-analyze is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // ExecStart must name an executable that exists here: this test binary.
    let exe = std::env::current_exe().unwrap();
    let service = dir.path().join(UNIT_NAME);
    fs::write(
        &service,
        unit(
            &exe.display().to_string(),
            paths::CONFIG,
            &[RUNNER_UNIT.to_owned()],
        ),
    )
    .unwrap();
    let slice_path = dir.path().join(SLICE_NAME);
    fs::write(&slice_path, slice()).unwrap();
    let runner = dir.path().join(RUNNER_UNIT);
    fs::write(
        &runner,
        format!(
            "[Unit]\nDescription=runner\n[Service]\nExecStart={}\n",
            exe.display()
        ),
    )
    .unwrap();
    let dropin = dir.path().join(format!("{RUNNER_UNIT}.d"));
    fs::create_dir(&dropin).unwrap();
    fs::write(dropin.join("ghgate.conf"), runner_dropin()).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg("--man=no")
        .arg(&service)
        .arg(&slice_path)
        .arg(&runner)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    for word in ["Unknown key", "Unknown section", "Failed to parse", "ignoring"] {
        assert!(!stderr.contains(word), "systemd-analyze complained:\n{stderr}");
    }
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn the_config_is_the_commented_default_and_validates_in_both_modes() {
    let path = Path::new("/etc/ghgate/ghgate.toml");
    let runner = Config::parse(&config_text(Mode::Runner, true), path).unwrap();
    assert_eq!(
        runner.redirect.cgroup,
        crate::config::CgroupTarget::Path("ghgate.slice".into())
    );
    assert!(runner.redirect.containers.enabled);
    let host = Config::parse(&config_text(Mode::Host, true), path).unwrap();
    assert_eq!(host.redirect.cgroup, crate::config::CgroupTarget::Host);
    assert!(
        !host.redirect.containers.enabled,
        "whole-host mode covers containers itself"
    );
    let text = config_text(Mode::Runner, false);
    assert!(
        text.lines().filter(|l| l.starts_with('#')).count() > 10,
        "not commented:\n{text}"
    );
    assert!(text.contains("[redirect.containers]\n"), "{text}");
    assert!(!Config::parse(&text, path).unwrap().redirect.containers.enabled);
}

#[test]
fn the_env_block_keeps_every_other_line_is_idempotent_and_comes_out_whole() {
    let vars = job_env(Trust::Debian);
    let original = "LANG=C.UTF-8\n# a comment of the admin's\nhttp_proxy=http://proxy:3128";
    let once = with_env_block(original, &vars);
    assert!(
        once.starts_with("LANG=C.UTF-8\n# a comment of the admin's\nhttp_proxy=http://proxy:3128\n"),
        "{once}"
    );
    assert!(
        once.contains("\nNODE_EXTRA_CA_CERTS=/usr/local/share/ghgate/ca.pem\n"),
        "{once}"
    );
    assert!(
        once.contains("\nSSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\n"),
        "{once}"
    );
    assert!(
        once.contains("\nREQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt\n"),
        "{once}"
    );
    // The runner reads every KEY=VALUE line: the markers must not look like one.
    assert!(!ENV_BEGIN.contains('=') && !ENV_END.contains('='));
    assert_eq!(
        with_env_block(&once, &vars),
        once,
        "a second install changes nothing"
    );
    assert_eq!(
        without_env_block(&once),
        "LANG=C.UTF-8\n# a comment of the admin's\nhttp_proxy=http://proxy:3128\n"
    );
    // A variable the admin already set is theirs.
    let theirs = with_env_block("SSL_CERT_FILE=/opt/bundle.pem\n", &vars);
    assert_eq!(theirs.matches("SSL_CERT_FILE=").count(), 1, "{theirs}");
    assert!(theirs.starts_with("SSL_CERT_FILE=/opt/bundle.pem\n"), "{theirs}");
    assert_eq!(without_env_block(&theirs), "SSL_CERT_FILE=/opt/bundle.pem\n");
    assert_eq!(with_env_block("", &vars), env_block(&vars));
}

#[test]
fn install_writes_everything_under_the_root_then_changes_nothing_the_second_time() {
    let root = debian_runner_root();
    let r = root.path();
    let plan = install_plan(&request(r, Mode::Runner)).unwrap();
    let done = plan.apply().unwrap();
    assert!(!changed(&done).is_empty());
    // Nothing on the live system: every command is printed as not run.
    for (line, outcome) in &done {
        if line.starts_with("run ") {
            assert_eq!(*outcome, Outcome::NotRun("not at root /"), "{line}");
        }
    }
    assert!(done.iter().any(|(l, _)| l == "run update-ca-certificates"));
    assert!(
        done.iter()
            .any(|(l, _)| l == "run systemctl enable --now ghgate.service")
    );

    let config = under(r, paths::CONFIG);
    assert_eq!(mode_of(&config), 0o600);
    assert_eq!(mode_of(&under(r, paths::CONFIG_DIR)), 0o700);
    assert_eq!(mode_of(&under(r, paths::STATE_DIR)), 0o700);
    let loaded = Config::load(&config).unwrap();
    assert!(loaded.redirect.containers.enabled);
    assert_eq!(mode_of(&under(r, paths::BINARY)), 0o755);
    assert_eq!(fs::read(under(r, paths::BINARY)).unwrap(), b"\x7fELF not really");
    let ca = crate::tls::ca::Ca::load(&under(r, "/var/lib/ghgate/ca")).unwrap();
    assert_eq!(
        fs::read_to_string(under(r, paths::DEBIAN_ANCHOR)).unwrap(),
        ca.cert_pem()
    );
    assert_eq!(
        fs::read_to_string(under(r, paths::CA_PUBLIC)).unwrap(),
        ca.cert_pem()
    );
    assert_eq!(mode_of(&under(r, paths::CA_PUBLIC)), 0o644);
    let unit_text = fs::read_to_string(under(r, paths::UNIT)).unwrap();
    assert!(
        unit_text.contains(&format!("Before={RUNNER_UNIT}\n")),
        "{unit_text}"
    );
    assert_eq!(fs::read_to_string(under(r, paths::SLICE)).unwrap(), slice());
    let dropin = under(r, paths::UNIT_DIR).join(format!("{RUNNER_UNIT}.d/ghgate.conf"));
    assert_eq!(fs::read_to_string(&dropin).unwrap(), runner_dropin());
    let env = fs::read_to_string(under(r, "/home/runner/a/.env")).unwrap();
    assert!(
        env.starts_with("LANG=C.UTF-8\nJAVA_HOME=/usr/lib/jvm/x\n"),
        "{env}"
    );
    assert!(
        env.contains("NODE_EXTRA_CA_CERTS=/usr/local/share/ghgate/ca.pem\n"),
        "{env}"
    );
    let manifest = read_manifest(r).unwrap();
    assert_eq!(manifest.runner_units, vec![RUNNER_UNIT.to_owned()]);
    assert_eq!(manifest.env_files, vec![PathBuf::from("/home/runner/a/.env")]);

    // Idempotent: the same plan again writes nothing and runs no command that follows a file.
    let again = install_plan(&request(r, Mode::Runner)).unwrap().apply().unwrap();
    assert_eq!(changed(&again), Vec::<&str>::new());
    assert!(
        again
            .iter()
            .any(|(l, o)| l.starts_with("note: /etc/ghgate/ghgate.toml exists") && *o == Outcome::Noted),
        "{again:?}"
    );
    // The CA was not replaced (trust in it survives a second install).
    let ca2 = crate::tls::ca::Ca::load(&under(r, "/var/lib/ghgate/ca")).unwrap();
    assert_eq!(ca.cert_pem(), ca2.cert_pem());
}

#[test]
fn uninstall_takes_back_everything_install_added_and_keeps_the_recordings() {
    let root = debian_runner_root();
    let r = root.path();
    let before_env = fs::read_to_string(under(r, "/home/runner/a/.env")).unwrap();
    install_plan(&request(r, Mode::Runner)).unwrap().apply().unwrap();
    fs::create_dir_all(under(r, "/var/lib/ghgate/record")).unwrap();
    fs::write(under(r, "/var/lib/ghgate/record/seg-1"), "evidence").unwrap();

    let done = uninstall_plan(r, false, false).unwrap().apply().unwrap();
    assert!(
        done.iter()
            .any(|(l, o)| l.starts_with("detach") && *o == Outcome::NotRun("not at root /"))
    );
    // The slice is left to the runners' next restart: stopping it would stop them.
    assert!(
        done.iter()
            .any(|(l, _)| l.contains("stay in ghgate.slice until they restart")),
        "{done:?}"
    );
    assert!(
        !done
            .iter()
            .any(|(l, _)| l.contains("stop ghgate.slice") && l.starts_with("run")),
        "{done:?}"
    );
    // Debian's rebuild without --fresh leaves the removed anchor's link in /etc/ssl/certs.
    assert!(
        done.iter()
            .any(|(l, _)| l == "run update-ca-certificates --fresh"),
        "{done:?}"
    );
    for gone in [
        paths::CONFIG,
        paths::CONFIG_DIR,
        paths::UNIT,
        paths::SLICE,
        paths::BINARY,
        paths::CA_PUBLIC,
        paths::CA_PUBLIC_DIR,
        paths::DEBIAN_ANCHOR,
        paths::MANIFEST,
        "/etc/systemd/system/actions.runner.octo-a.r1.service.d",
    ] {
        assert!(!under(r, gone).exists(), "{gone} left behind");
    }
    assert_eq!(
        fs::read_to_string(under(r, "/home/runner/a/.env")).unwrap(),
        before_env
    );
    assert!(
        under(r, paths::UNIT_DIR).join(RUNNER_UNIT).exists(),
        "the runner's own unit stays"
    );
    assert!(
        under(r, paths::DEBIAN_ANCHORS).is_dir(),
        "the trust store itself stays"
    );
    assert_eq!(
        fs::read_to_string(under(r, "/var/lib/ghgate/record/seg-1")).unwrap(),
        "evidence"
    );
    let again = uninstall_plan(r, false, false).unwrap().apply().unwrap();
    assert_eq!(
        changed(&again),
        Vec::<&str>::new(),
        "a second uninstall changes nothing"
    );

    uninstall_plan(r, true, false).unwrap().apply().unwrap();
    assert!(!under(r, paths::STATE_DIR).exists(), "--purge removes the state");
    // Only what was there before install is left.
    let mut left: Vec<String> = walk(r);
    left.sort();
    assert_eq!(
        left,
        vec![
            "etc/systemd/system/actions.runner.octo-a.r1.service",
            "ghgate-binary",
            "home/runner/a/.env",
        ]
    );
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out
}

#[test]
fn dry_run_prints_every_file_and_command_and_writes_nothing() {
    let root = debian_runner_root();
    let r = root.path();
    let before = walk(r);
    let plan = install_plan(&request(r, Mode::Runner)).unwrap();
    let text = plan.describe();
    assert_eq!(walk(r), before, "describing a plan wrote something");
    for expect in [
        "file /etc/ghgate/ghgate.toml",
        "(mode 0600",
        "    | cgroup = \"ghgate.slice\"",
        "file /etc/systemd/system/ghgate.service",
        "    | NoNewPrivileges=yes",
        "file /etc/systemd/system/ghgate.slice",
        "file /etc/systemd/system/actions.runner.octo-a.r1.service.d/ghgate.conf",
        "    | Slice=ghgate.slice",
        "file /usr/local/share/ca-certificates/ghgate.crt",
        "create the interception CA in /var/lib/ghgate/ca",
        "edit /home/runner/a/.env",
        "    | SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
        "run: update-ca-certificates (rebuild the system trust store, if /usr/local/share/ca-certificates/ghgate.crt changed)",
        "run: systemctl daemon-reload",
        "run: systemctl enable --now ghgate.service",
        "file /usr/local/bin/ghgate",
        "note: restart each runner when it is idle",
    ] {
        assert!(text.contains(expect), "{expect:?} missing from:\n{text}");
    }
    let text = uninstall_plan(r, false, false).unwrap().describe();
    for expect in [
        "run: systemctl disable --now ghgate.service",
        "detach every program and remove every pin under /sys/fs/bpf/ghgate",
        "remove /etc/systemd/system/ghgate.service",
        "edit /home/runner/a/.env",
        "note: kept /var/lib/ghgate",
    ] {
        assert!(text.contains(expect), "{expect:?} missing from:\n{text}");
    }
    assert_eq!(walk(r), before);
}

#[test]
fn an_existing_config_is_kept_when_valid_and_refused_when_not() {
    let root = debian_runner_root();
    let r = root.path();
    fs::create_dir_all(under(r, paths::CONFIG_DIR)).unwrap();
    let mine = config_text(Mode::Host, false).replace("retry_secs = 5", "retry_secs = 7");
    fs::write(under(r, paths::CONFIG), &mine).unwrap();
    install_plan(&request(r, Mode::Host)).unwrap().apply().unwrap();
    assert_eq!(fs::read_to_string(under(r, paths::CONFIG)).unwrap(), mine);
    fs::write(under(r, paths::CONFIG), "[redirect]\ncgroup = \"../x\"\n").unwrap();
    let err = install_plan(&request(r, Mode::Host)).unwrap_err();
    assert!(
        err.downcast_ref::<crate::config::ConfigError>().is_some(),
        "an invalid config is a configuration error (exit 2): {err:#}"
    );
}

#[test]
fn runner_mode_needs_a_runner_and_host_mode_touches_no_unit_of_theirs() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("ghgate-binary"), b"x").unwrap();
    let err = install_plan(&request(root.path(), Mode::Runner)).unwrap_err();
    assert!(
        err.to_string().contains("no Actions runner service found"),
        "{err}"
    );
    let runner_root = debian_runner_root();
    let plan = install_plan(&request(runner_root.path(), Mode::Host)).unwrap();
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::File { path, .. } if path.to_string_lossy().contains(".service.d"))),
        "{plan:?}"
    );
    // The runner's .env still gets the CA variables: tools ignoring the system store need them.
    assert!(plan.steps.iter().any(|s| matches!(s, Step::EnvBlock { .. })));
}

#[test]
fn java_keystores_are_imported_unless_debians_hook_rebuilds_them() {
    let root = debian_runner_root();
    let r = root.path();
    let own = under(r, "/usr/lib/jvm/temurin-21/lib/security");
    fs::create_dir_all(&own).unwrap();
    fs::write(own.join("cacerts"), b"keystore").unwrap();
    let shared = under(r, "/usr/lib/jvm/openjdk-17/lib/security");
    fs::create_dir_all(&shared).unwrap();
    std::os::unix::fs::symlink(paths::DEBIAN_JAVA_STORE, shared.join("cacerts")).unwrap();
    let stores = |r: &Path| -> Vec<String> {
        install_plan(&request(r, Mode::Runner))
            .unwrap()
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Run { argv, .. } if argv.join(" ").contains("keytool") => Some(argv.join(" ")),
                _ => None,
            })
            .collect()
    };
    let without_hook = stores(r);
    assert_eq!(without_hook.len(), 2, "{without_hook:?}");
    fs::create_dir_all(under(r, "/etc/ca-certificates/update.d")).unwrap();
    fs::write(under(r, paths::DEBIAN_JAVA_HOOK), "#!/bin/sh\n").unwrap();
    let with_hook = stores(r);
    assert_eq!(with_hook.len(), 1, "{with_hook:?}");
    assert!(with_hook[0].contains("/usr/lib/jvm/temurin-21/lib/security/cacerts"));
    assert!(with_hook[0].contains("-importcert"));
}
