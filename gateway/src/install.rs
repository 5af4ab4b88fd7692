//! `ghgate install` and `ghgate uninstall` as data: a [`Plan`] of steps (directories, files, a
//! block in a runner's `.env`, commands), computed from what is on the host under a root prefix,
//! then printed (`--dry-run`) or applied.
//!
//! Every path is joined to the root prefix, so tests apply the real plan in a temporary directory.
//! Commands (systemctl, update-ca-certificates, keytool, detaching the programs) act on the
//! running system, so they are only run when the root is `/`; under another root they are printed
//! as not run. Applying a plan twice changes nothing the second time: files are compared before
//! they are written, and a command that follows a file runs only when that file changed.
//!
//! This module must never touch a path outside the root prefix, never overwrite a config the
//! admin already has, and never remove the gateway's state (its recordings) unless asked.
use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{config::Config, runner::RunnerUnit};

/// Where things go on the host (without the root prefix).
pub mod paths {
    pub const BINARY: &str = "/usr/local/bin/ghgate";
    pub const CONFIG_DIR: &str = "/etc/ghgate";
    pub const CONFIG: &str = "/etc/ghgate/ghgate.toml";
    pub const UNIT_DIR: &str = "/etc/systemd/system";
    pub const UNIT: &str = "/etc/systemd/system/ghgate.service";
    pub const SLICE: &str = "/etc/systemd/system/ghgate.slice";
    /// The CA certificate, world-readable, for `NODE_EXTRA_CA_CERTS` and container mounts.
    pub const CA_PUBLIC_DIR: &str = "/usr/local/share/ghgate";
    pub const CA_PUBLIC: &str = "/usr/local/share/ghgate/ca.pem";
    /// Debian's local trust anchors (`update-ca-certificates`) and the bundle it builds.
    pub const DEBIAN_ANCHORS: &str = "/usr/local/share/ca-certificates";
    pub const DEBIAN_ANCHOR: &str = "/usr/local/share/ca-certificates/ghgate.crt";
    pub const DEBIAN_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
    /// Debian's hook that rebuilds Java's shared keystore on `update-ca-certificates`.
    pub const DEBIAN_JAVA_HOOK: &str = "/etc/ca-certificates/update.d/jks-keystore";
    pub const DEBIAN_JAVA_STORE: &str = "/etc/ssl/certs/java/cacerts";
    /// The RHEL family's (`update-ca-trust`).
    pub const RHEL_ANCHORS: &str = "/etc/pki/ca-trust/source/anchors";
    pub const RHEL_ANCHOR: &str = "/etc/pki/ca-trust/source/anchors/ghgate.pem";
    pub const RHEL_BUNDLE: &str = "/etc/pki/tls/certs/ca-bundle.crt";
    pub const JVM_DIR: &str = "/usr/lib/jvm";
    /// What install did, for uninstall and doctor.
    pub const MANIFEST: &str = "/var/lib/ghgate/install.json";
    pub const STATE_DIR: &str = "/var/lib/ghgate";
}

/// The systemd unit name of the gateway, and the slice runners are moved into.
pub const UNIT_NAME: &str = "ghgate.service";
pub const SLICE_NAME: &str = "ghgate.slice";
/// The `.env` block markers (no `=` in them: the runner reads every `KEY=VALUE` line).
const ENV_BEGIN: &str = "# ghgate: begin (added by ghgate install, removed by ghgate uninstall)";
const ENV_END: &str = "# ghgate: end";
/// The alias of the CA in Java keystores.
const JAVA_ALIAS: &str = "ghgate-interception-ca";

/// What is governed: the runner services (moved into `ghgate.slice`, which the programs are
/// attached to), or every process of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Runner,
    Host,
}

/// What `ghgate install` was asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub root: PathBuf,
    pub mode: Mode,
    /// The binary copied to `/usr/local/bin/ghgate`.
    pub binary: PathBuf,
    /// Attach to container runtimes' scopes as they appear (`[redirect.containers]`).
    pub containers: bool,
    /// Runner directories given by hand (their `.env` is edited), besides those the units name.
    pub runner_dirs: Vec<PathBuf>,
}

/// One thing install or uninstall does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Dir {
        path: PathBuf,
        mode: u32,
    },
    File {
        path: PathBuf,
        mode: u32,
        content: Vec<u8>,
        what: &'static str,
    },
    /// A file whose content is made by install (the CA): kept when it exists.
    CreateCa {
        dir: PathBuf,
        names: Vec<String>,
    },
    /// A copy of the CA certificate at `path` (from the CA in `ca_dir`).
    CaCopy {
        ca_dir: PathBuf,
        path: PathBuf,
        mode: u32,
    },
    EnvBlock {
        path: PathBuf,
        vars: Vec<(String, String)>,
    },
    RemoveEnvBlock {
        path: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    /// Remove a directory if it is empty.
    RemoveDir {
        path: PathBuf,
    },
    /// Remove a directory and everything in it (`--purge`).
    RemoveTree {
        path: PathBuf,
    },
    /// Run a command on the live system: always, or only when one of `after` changed.
    Run {
        argv: Vec<String>,
        after: Vec<PathBuf>,
        why: &'static str,
    },
    /// Detach the programs and remove the pins under this bpffs directory.
    Detach {
        pin_dir: PathBuf,
    },
    /// Make the recorder's key in `record_dir` (unless it exists) and pin its public key in
    /// the record sink, so that a key changed before the gateway's first upload is reported.
    PinKey {
        record_dir: PathBuf,
        sink: Box<crate::record::sink::SinkConfig>,
    },
    /// Something the admin must do or know; printed, never done.
    Note(String),
}

/// Steps with the root prefix they apply under.
#[derive(Debug, Clone)]
pub struct Plan {
    pub root: PathBuf,
    pub steps: Vec<Step>,
}

/// What applying one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Changed,
    Unchanged,
    /// A command not run: not at root `/`, or nothing it follows changed.
    NotRun(&'static str),
    Noted,
}

/// A path on the host under the root prefix.
pub fn under(root: &Path, path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn live(root: &Path) -> bool {
    root == Path::new("/")
}

/// The trust store family found under the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Debian,
    Rhel,
}

impl Trust {
    pub fn detect(root: &Path) -> Option<Trust> {
        if under(root, paths::DEBIAN_ANCHORS).is_dir() {
            Some(Trust::Debian)
        } else if under(root, paths::RHEL_ANCHORS).is_dir() {
            Some(Trust::Rhel)
        } else {
            None
        }
    }
    /// The system bundle jobs are pointed at (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`).
    pub fn bundle(self) -> &'static str {
        match self {
            Trust::Debian => paths::DEBIAN_BUNDLE,
            Trust::Rhel => paths::RHEL_BUNDLE,
        }
    }
    fn anchor(self) -> &'static str {
        match self {
            Trust::Debian => paths::DEBIAN_ANCHOR,
            Trust::Rhel => paths::RHEL_ANCHOR,
        }
    }
    fn update(self) -> Vec<String> {
        match self {
            Trust::Debian => vec!["update-ca-certificates".into()],
            Trust::Rhel => vec!["update-ca-trust".into(), "extract".into()],
        }
    }
    /// The rebuild after the anchor is removed. Debian's plain `update-ca-certificates` leaves
    /// the removed local anchor's link in /etc/ssl/certs (dangling, but left behind: seen in the
    /// systemd guest test); `--fresh` rebuilds the directory from what is there.
    fn update_after_removal(self) -> Vec<String> {
        match self {
            Trust::Debian => vec!["update-ca-certificates".into(), "--fresh".into()],
            Trust::Rhel => self.update(),
        }
    }
}

/// The environment a runner's jobs get so that tools ignoring the system store trust the CA.
pub fn job_env(trust: Trust) -> Vec<(String, String)> {
    vec![
        ("NODE_EXTRA_CA_CERTS".into(), paths::CA_PUBLIC.into()),
        ("REQUESTS_CA_BUNDLE".into(), trust.bundle().into()),
        ("SSL_CERT_FILE".into(), trust.bundle().into()),
    ]
}

/// The systemd unit. `before` are the runner units it must start ahead of.
pub fn unit(binary: &str, config: &str, before: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Written by `ghgate install`; `ghgate uninstall` removes it.");
    let _ = writeln!(s, "[Unit]");
    let _ = writeln!(
        s,
        "Description=ghgate: mediate and record this host's GitHub traffic"
    );
    let _ = writeln!(s, "Wants=network-online.target {SLICE_NAME}");
    let _ = writeln!(s, "After=network-online.target {SLICE_NAME}");
    for b in before {
        let _ = writeln!(s, "Before={b}");
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "[Service]");
    let _ = writeln!(
        s,
        "# notify: the gateway says READY once its programs are attached, so Before= holds the"
    );
    let _ = writeln!(
        s,
        "# runners back until their traffic is enforced (simple would release them at fork)."
    );
    let _ = writeln!(s, "Type=notify");
    let _ = writeln!(s, "NotifyAccess=main");
    let _ = writeln!(s, "ExecStart={binary} run --config {config}");
    let _ = writeln!(s, "Environment=GHGATE_CONFIG={config}");
    let _ = writeln!(
        s,
        "# The programs stay attached while ghgate restarts: connections are refused (fail-closed)"
    );
    let _ = writeln!(s, "# until it is back, and the gap is recorded.");
    let _ = writeln!(s, "Restart=on-failure");
    let _ = writeln!(s, "RestartSec=2s");
    let _ = writeln!(s, "TimeoutStopSec=30s");
    let _ = writeln!(
        s,
        "# One open file per intercepted connection: the gateway raises its soft limit to this."
    );
    let _ = writeln!(s, "LimitNOFILE=524288");
    let _ = writeln!(
        s,
        "# CAP_BPF, CAP_PERFMON: load the programs and maps. CAP_NET_ADMIN: attach them to cgroups, mark"
    );
    let _ = writeln!(
        s,
        "# the listeners (SO_MARK). CAP_SYS_ADMIN: mount bpffs and pin (and kernels before 5.8, which"
    );
    let _ = writeln!(
        s,
        "# have no CAP_BPF). CAP_SYS_RESOURCE: the locked-memory limit older kernels charge maps to."
    );
    let _ = writeln!(
        s,
        "# CAP_SYS_PTRACE: read a caller's /proc/<pid>/exe and environ (attribution)."
    );
    let _ = writeln!(
        s,
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_ADMIN CAP_SYS_RESOURCE CAP_SYS_PTRACE"
    );
    let _ = writeln!(s, "NoNewPrivileges=yes");
    let _ = writeln!(s, "LimitMEMLOCK=infinity");
    let _ = writeln!(
        s,
        "# Read-only everywhere but its own directories (and /sys: bpffs, cgroups)."
    );
    let _ = writeln!(s, "ProtectSystem=strict");
    let _ = writeln!(s, "ProtectHome=yes");
    let _ = writeln!(s, "PrivateTmp=yes");
    let _ = writeln!(s, "PrivateDevices=yes");
    let _ = writeln!(s, "ProtectKernelModules=yes");
    let _ = writeln!(s, "ProtectClock=yes");
    let _ = writeln!(s, "ProtectHostname=yes");
    let _ = writeln!(s, "RestrictRealtime=yes");
    let _ = writeln!(s, "LockPersonality=yes");
    let _ = writeln!(s, "SystemCallArchitectures=native");
    let _ = writeln!(s, "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK");
    let _ = writeln!(s, "StateDirectory=ghgate");
    let _ = writeln!(s, "StateDirectoryMode=0700");
    let _ = writeln!(s, "RuntimeDirectory=ghgate");
    let _ = writeln!(s, "RuntimeDirectoryMode=0700");
    let _ = writeln!(s, "ConfigurationDirectory=ghgate");
    let _ = writeln!(s, "ConfigurationDirectoryMode=0700");
    let _ = writeln!(s);
    let _ = writeln!(s, "[Install]");
    let _ = writeln!(s, "WantedBy=multi-user.target");
    s
}

/// The slice the runner services are moved into; the programs are attached to it, so every
/// process a runner starts (job steps, their children) is born governed.
pub fn slice() -> String {
    "# Written by `ghgate install`; `ghgate uninstall` removes it.\n[Unit]\nDescription=Processes whose GitHub traffic ghgate mediates (Actions runners)\nBefore=slices.target\n"
        .to_owned()
}

/// The drop-in that puts a runner service into the slice, after the gateway.
pub fn runner_dropin() -> String {
    format!(
        "# Written by `ghgate install`; `ghgate uninstall` removes it.\n# The runner and every job it starts run in {SLICE_NAME}, which ghgate's programs are attached to.\n[Unit]\nWants={UNIT_NAME}\nAfter={UNIT_NAME}\n\n[Service]\nSlice={SLICE_NAME}\n"
    )
}

/// The config: the shipped default, with the cgroup of the chosen mode and the containers table.
pub fn config_text(mode: Mode, containers: bool) -> String {
    let shipped = include_str!("../config/default.toml");
    let cgroup = match mode {
        Mode::Runner => format!(
            "# The Actions runner services are moved into {SLICE_NAME} (a drop-in per runner), and the\n# programs are attached to it: every job step is governed.\ncgroup = \"ghgate.slice\""
        ),
        Mode::Host => "# Whole-host mode: every process on this machine (the recommendation for dedicated runners).\ncgroup = \"host\"".to_owned(),
    };
    let containers_table = format!(
        "\n[redirect.containers]\n# Attach to container runtimes' scopes as they appear (Docker's docker-<id>.scope, containerd's,\n# podman's): job and service containers started by the Docker daemon are not in the runner's\n# cgroup. A container's first instants may run before the programs are attached: whole-host\n# mode has no such window.\nenabled = {}\n",
        containers && mode == Mode::Runner
    );
    let header = "# Written by `ghgate install` (from the shipped default); edit freely: install keeps an\n# existing file, `ghgate check` validates it, `systemctl restart ghgate` applies it.\n";
    let body = shipped
        .replacen("cgroup = \"ghgate.clients\"", &cgroup, 1)
        .replacen("\n[listen]\n", &format!("{containers_table}\n[listen]\n"), 1);
    format!("{header}{body}")
}

/// The install plan for a request.
pub fn install_plan(req: &Request) -> anyhow::Result<Plan> {
    let root = &req.root;
    let mut steps = Vec::new();
    let trust = Trust::detect(root);
    let config_path = under(root, paths::CONFIG);
    // An existing config is kept (the admin's edits win) but must be valid.
    let (config, config_exists) = if config_path.exists() {
        (Config::load(&config_path)?, true)
    } else {
        let text = config_text(req.mode, req.containers);
        (Config::parse(&text, &config_path)?, false)
    };
    steps.push(Step::Dir {
        path: paths::CONFIG_DIR.into(),
        mode: 0o700,
    });
    steps.push(Step::Dir {
        path: config.state_dir.clone(),
        mode: 0o700,
    });
    steps.push(Step::File {
        path: paths::BINARY.into(),
        mode: 0o755,
        content: fs::read(&req.binary)
            .with_context(|| format!("cannot read the ghgate binary {}", req.binary.display()))?,
        what: "the ghgate binary",
    });
    if config_exists {
        steps.push(Step::Note(format!(
            "{} exists and is valid: kept as it is",
            paths::CONFIG
        )));
    } else {
        steps.push(Step::File {
            path: paths::CONFIG.into(),
            mode: 0o600,
            content: config_text(req.mode, req.containers).into_bytes(),
            what: "the config",
        });
    }
    if let Some(sink) = config.record.sink.as_ref().filter(|_| config.record.enabled) {
        steps.push(Step::PinKey {
            record_dir: config.record_dir(),
            sink: Box::new(sink.clone()),
        });
    }
    let ca_dir = crate::tls::ca::dir(&config.state_dir);
    steps.push(Step::CreateCa {
        dir: ca_dir.clone(),
        names: config.tls.intercept.clone(),
    });
    steps.push(Step::Dir {
        path: paths::CA_PUBLIC_DIR.into(),
        mode: 0o755,
    });
    steps.push(Step::CaCopy {
        ca_dir: ca_dir.clone(),
        path: paths::CA_PUBLIC.into(),
        mode: 0o644,
    });
    match trust {
        Some(t) => {
            steps.push(Step::CaCopy {
                ca_dir: ca_dir.clone(),
                path: t.anchor().into(),
                mode: 0o644,
            });
            steps.push(Step::Run {
                argv: t.update(),
                after: vec![t.anchor().into()],
                why: "rebuild the system trust store",
            });
        }
        None => steps.push(Step::Note(format!(
            "no system trust store found ({} or {}): trust {} by hand",
            paths::DEBIAN_ANCHORS,
            paths::RHEL_ANCHORS,
            paths::CA_PUBLIC
        ))),
    }
    for store in java_keystores(root) {
        steps.push(java_import(&store));
    }
    let units = crate::runner::units_in(&under(root, paths::UNIT_DIR));
    let mut env_files: Vec<PathBuf> = units.iter().filter_map(RunnerUnit::env_file).collect();
    env_files.extend(req.runner_dirs.iter().map(|d| d.join(".env")));
    env_files.sort();
    env_files.dedup();
    let before: Vec<String> = match req.mode {
        Mode::Runner => units.iter().map(|u| u.name.clone()).collect(),
        Mode::Host => Vec::new(),
    };
    if req.mode == Mode::Runner {
        if units.is_empty() {
            bail!(
                "no Actions runner service found ({}/actions.runner.*.service): install the runner as a service first (./svc.sh install), or use --host",
                paths::UNIT_DIR
            );
        }
        steps.push(Step::File {
            path: paths::SLICE.into(),
            mode: 0o644,
            content: slice().into_bytes(),
            what: "the slice the runners run in",
        });
        for u in &units {
            let dir = PathBuf::from(paths::UNIT_DIR).join(format!("{}.d", u.name));
            steps.push(Step::Dir {
                path: dir.clone(),
                mode: 0o755,
            });
            steps.push(Step::File {
                path: dir.join("ghgate.conf"),
                mode: 0o644,
                content: runner_dropin().into_bytes(),
                what: "the runner's drop-in",
            });
        }
    }
    steps.push(Step::File {
        path: paths::UNIT.into(),
        mode: 0o644,
        content: unit(paths::BINARY, paths::CONFIG, &before).into_bytes(),
        what: "the systemd unit",
    });
    let mut unit_files = vec![PathBuf::from(paths::UNIT), PathBuf::from(paths::SLICE)];
    if req.mode == Mode::Runner {
        unit_files.extend(
            units
                .iter()
                .map(|u| PathBuf::from(paths::UNIT_DIR).join(format!("{}.d/ghgate.conf", u.name))),
        );
    }
    let env = trust.map(job_env).unwrap_or_else(|| {
        vec![
            ("NODE_EXTRA_CA_CERTS".into(), paths::CA_PUBLIC.into()),
            ("REQUESTS_CA_BUNDLE".into(), paths::CA_PUBLIC.into()),
        ]
    });
    for f in &env_files {
        steps.push(Step::EnvBlock {
            path: f.clone(),
            vars: env.clone(),
        });
    }
    steps.push(Step::Run {
        argv: vec!["systemctl".into(), "daemon-reload".into()],
        after: unit_files,
        why: "load the unit files",
    });
    steps.push(Step::Run {
        argv: vec![
            "systemctl".into(),
            "enable".into(),
            "--now".into(),
            UNIT_NAME.into(),
        ],
        after: Vec::new(),
        why: "start the gateway now and at every boot",
    });
    if req.mode == Mode::Runner {
        let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
        steps.push(Step::Note(format!(
            "restart each runner when it is idle so that it runs in {SLICE_NAME} and its jobs read the new .env: systemctl restart {}",
            names.join(" ")
        )));
    }
    steps.push(Step::Note("check the result with: ghgate doctor".to_owned()));
    steps.push(Step::File {
        path: paths::MANIFEST.into(),
        mode: 0o600,
        content: manifest(req.mode, &units, &env_files).into_bytes(),
        what: "what was installed (read by uninstall and doctor)",
    });
    Ok(Plan {
        root: root.clone(),
        steps,
    })
}

/// The record of what install did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub mode: String,
    pub runner_units: Vec<String>,
    pub env_files: Vec<PathBuf>,
}

fn manifest(mode: Mode, units: &[RunnerUnit], env_files: &[PathBuf]) -> String {
    let m = Manifest {
        mode: match mode {
            Mode::Runner => "runner",
            Mode::Host => "host",
        }
        .into(),
        runner_units: units.iter().map(|u| u.name.clone()).collect(),
        env_files: env_files.to_vec(),
    };
    serde_json::to_string_pretty(&m).unwrap_or_default() + "\n"
}

/// The manifest install left under `root`, if any.
pub fn read_manifest(root: &Path) -> Option<Manifest> {
    let text = fs::read_to_string(under(root, paths::MANIFEST)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Java keystores that are not Debian's shared one (which `update-ca-certificates` rebuilds
/// through its hook when that is installed), as host paths.
fn java_keystores(root: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(under(root, paths::JVM_DIR)) else {
        return Vec::new();
    };
    let hooked = under(root, paths::DEBIAN_JAVA_HOOK).exists();
    let mut out = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let store = e.path().join("lib/security/cacerts");
        let Ok(meta) = fs::symlink_metadata(&store) else {
            continue;
        };
        let host = PathBuf::from(paths::JVM_DIR)
            .join(e.file_name())
            .join("lib/security/cacerts");
        let target = if meta.file_type().is_symlink() {
            fs::read_link(&store).ok()
        } else {
            None
        };
        match target {
            Some(t) if t == Path::new(paths::DEBIAN_JAVA_STORE) && hooked => continue,
            Some(t) if t.is_absolute() => out.push(t),
            _ => out.push(host),
        }
    }
    out.sort();
    out.dedup();
    out
}

fn java_import(store: &Path) -> Step {
    let store = store.display().to_string();
    Step::Run {
        argv: vec![
            "sh".into(),
            "-c".into(),
            format!(
                "keytool -list -keystore '{store}' -storepass changeit -alias {JAVA_ALIAS} >/dev/null 2>&1 || keytool -importcert -noprompt -keystore '{store}' -storepass changeit -alias {JAVA_ALIAS} -file {}",
                paths::CA_PUBLIC
            ),
        ],
        after: Vec::new(),
        why: "trust the CA in a Java keystore",
    }
}

/// The uninstall plan: everything install adds, whatever install's options were.
pub fn uninstall_plan(root: &Path, purge: bool, keep_config: bool) -> anyhow::Result<Plan> {
    let mut steps = Vec::new();
    let manifest = read_manifest(root).unwrap_or_default();
    let config = Config::load(&under(root, paths::CONFIG)).ok();
    steps.push(Step::Run {
        argv: vec![
            "systemctl".into(),
            "disable".into(),
            "--now".into(),
            UNIT_NAME.into(),
        ],
        after: Vec::new(),
        why: "stop the gateway",
    });
    let pin_dir = config
        .as_ref()
        .map(|c| c.redirect.pin_dir.clone())
        .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/ghgate"));
    steps.push(Step::Detach { pin_dir });
    let mut units: Vec<String> = manifest.runner_units.clone();
    for u in crate::runner::units_in(&under(root, paths::UNIT_DIR)) {
        if !units.contains(&u.name) {
            units.push(u.name);
        }
    }
    for u in &units {
        let dir = PathBuf::from(paths::UNIT_DIR).join(format!("{u}.d"));
        steps.push(Step::Remove {
            path: dir.join("ghgate.conf"),
        });
        steps.push(Step::RemoveDir { path: dir });
    }
    steps.push(Step::Remove {
        path: paths::UNIT.into(),
    });
    steps.push(Step::Remove {
        path: paths::SLICE.into(),
    });
    steps.push(Step::Run {
        argv: vec!["systemctl".into(), "daemon-reload".into()],
        after: vec![paths::UNIT.into()],
        why: "forget the unit files",
    });
    if !units.is_empty() {
        // Stopping the slice would stop the runners in it: they leave it when they restart.
        steps.push(Step::Note(format!(
            "the runners stay in {SLICE_NAME} until they restart (then they run in system.slice);              `systemctl stop {SLICE_NAME}` once it is empty unloads it"
        )));
    }
    for store in java_keystores(root) {
        let store = store.display().to_string();
        steps.push(Step::Run {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "! keytool -list -keystore '{store}' -storepass changeit -alias {JAVA_ALIAS} >/dev/null 2>&1 || keytool -delete -keystore '{store}' -storepass changeit -alias {JAVA_ALIAS}"
                ),
            ],
            after: Vec::new(),
            why: "remove the CA from a Java keystore",
        });
    }
    for t in [Trust::Debian, Trust::Rhel] {
        steps.push(Step::Remove {
            path: t.anchor().into(),
        });
        if Trust::detect(root) == Some(t) {
            steps.push(Step::Run {
                argv: t.update_after_removal(),
                after: vec![t.anchor().into()],
                why: "rebuild the system trust store without the CA",
            });
        }
    }
    let mut env_files = manifest.env_files.clone();
    for u in crate::runner::units_in(&under(root, paths::UNIT_DIR)) {
        if let Some(f) = u.env_file().filter(|f| !env_files.contains(f)) {
            env_files.push(f);
        }
    }
    for f in env_files {
        steps.push(Step::RemoveEnvBlock { path: f });
    }
    steps.push(Step::Remove {
        path: paths::CA_PUBLIC.into(),
    });
    steps.push(Step::RemoveDir {
        path: paths::CA_PUBLIC_DIR.into(),
    });
    steps.push(Step::Remove {
        path: paths::BINARY.into(),
    });
    if !keep_config {
        steps.push(Step::Remove {
            path: paths::CONFIG.into(),
        });
        steps.push(Step::RemoveDir {
            path: paths::CONFIG_DIR.into(),
        });
    }
    steps.push(Step::Remove {
        path: paths::MANIFEST.into(),
    });
    let state_dir = config
        .map(|c| c.state_dir)
        .unwrap_or_else(|| PathBuf::from(paths::STATE_DIR));
    if purge {
        steps.push(Step::RemoveTree { path: state_dir });
    } else {
        steps.push(Step::Note(format!(
            "kept {} (the recordings, the recorder's key and the CA): --purge removes it",
            state_dir.display()
        )));
    }
    if !units.is_empty() {
        steps.push(Step::Note(format!(
            "restart each runner when it is idle to move it out of {SLICE_NAME}: systemctl restart {}",
            units.join(" ")
        )));
    }
    Ok(Plan {
        root: root.to_path_buf(),
        steps,
    })
}

impl Plan {
    /// Every step as it would be done: files with their modes and contents, commands in full.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let root_note = if live(&self.root) {
            String::new()
        } else {
            format!(" (under {})", self.root.display())
        };
        for step in &self.steps {
            match step {
                Step::Dir { path, mode } => {
                    let _ = writeln!(out, "directory {}{root_note} (mode {mode:04o})", path.display());
                }
                Step::File {
                    path,
                    mode,
                    content,
                    what,
                } => {
                    let _ = writeln!(
                        out,
                        "file {}{root_note} (mode {mode:04o}, {} bytes): {what}",
                        path.display(),
                        content.len()
                    );
                    match std::str::from_utf8(content) {
                        Ok(text) if !content.contains(&0) => {
                            for line in text.lines() {
                                let _ = writeln!(out, "    | {line}");
                            }
                        }
                        _ => {
                            let _ = writeln!(out, "    (binary)");
                        }
                    }
                }
                Step::CreateCa { dir, names } => {
                    let _ = writeln!(
                        out,
                        "create the interception CA in {}{root_note} unless one exists (key mode 0600), name-constrained to {} names",
                        dir.display(),
                        names.len()
                    );
                }
                Step::CaCopy { ca_dir, path, mode } => {
                    let _ = writeln!(
                        out,
                        "file {}{root_note} (mode {mode:04o}): the CA certificate from {}",
                        path.display(),
                        ca_dir.display()
                    );
                }
                Step::EnvBlock { path, vars } => {
                    let _ = writeln!(
                        out,
                        "edit {}{root_note}: add (keeping every other line, and any of these the file already sets)",
                        path.display()
                    );
                    for line in env_block(vars).lines() {
                        let _ = writeln!(out, "    | {line}");
                    }
                }
                Step::RemoveEnvBlock { path } => {
                    let _ = writeln!(out, "edit {}{root_note}: remove ghgate's block", path.display());
                }
                Step::Remove { path } => {
                    let _ = writeln!(out, "remove {}{root_note}", path.display());
                }
                Step::RemoveDir { path } => {
                    let _ = writeln!(out, "remove {}{root_note} if empty", path.display());
                }
                Step::RemoveTree { path } => {
                    let _ = writeln!(out, "remove {}{root_note} and everything in it", path.display());
                }
                Step::Run { argv, after, why } => {
                    let when = if after.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", if {} changed",
                            after
                                .iter()
                                .map(|p| p.display().to_string())
                                .collect::<Vec<_>>()
                                .join(" or ")
                        )
                    };
                    let _ = writeln!(out, "run: {} ({why}{when})", shell_words(argv));
                }
                Step::Detach { pin_dir } => {
                    let _ = writeln!(
                        out,
                        "detach every program and remove every pin under {} (as `ghgate detach`)",
                        pin_dir.display()
                    );
                }
                Step::PinKey { record_dir, sink } => {
                    let _ = writeln!(
                        out,
                        "create the recorder's key in {}{root_note} unless one exists (mode 0600), and pin its public key in the record sink as {}/{}/runner.pub (a different key already pinned there fails the install)",
                        record_dir.display(),
                        sink.bucket,
                        sink.runner()
                    );
                }
                Step::Note(n) => {
                    let _ = writeln!(out, "note: {n}");
                }
            }
        }
        out
    }

    /// Applies every step; returns each step's line and outcome. Stops at the first error.
    pub fn apply(&self) -> anyhow::Result<Vec<(String, Outcome)>> {
        let mut changed: Vec<PathBuf> = Vec::new();
        let mut done = Vec::new();
        for step in &self.steps {
            let (line, outcome) = self.apply_one(step, &changed)?;
            if outcome == Outcome::Changed {
                match step {
                    Step::File { path, .. }
                    | Step::CaCopy { path, .. }
                    | Step::Remove { path }
                    | Step::EnvBlock { path, .. }
                    | Step::RemoveEnvBlock { path } => changed.push(path.clone()),
                    _ => {}
                }
            }
            done.push((line, outcome));
        }
        Ok(done)
    }

    fn apply_one(&self, step: &Step, changed: &[PathBuf]) -> anyhow::Result<(String, Outcome)> {
        let root = &self.root;
        Ok(match step {
            Step::Dir { path, mode } => {
                let p = under(root, path);
                let outcome = if p.is_dir() {
                    Outcome::Unchanged
                } else {
                    fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
                    Outcome::Changed
                };
                let perms = fs::metadata(&p)?.permissions();
                let outcome = if perms.mode() & 0o7777 != *mode {
                    fs::set_permissions(&p, fs::Permissions::from_mode(*mode))?;
                    Outcome::Changed
                } else {
                    outcome
                };
                (format!("directory {}", path.display()), outcome)
            }
            Step::File {
                path, mode, content, ..
            } => (
                format!("file {}", path.display()),
                write_file(&under(root, path), *mode, content)?,
            ),
            Step::CreateCa { dir, names } => {
                let p = under(root, dir);
                let outcome = if p.join(crate::tls::ca::KEY_FILE).exists()
                    || p.join(crate::tls::ca::CERT_FILE).exists()
                {
                    crate::tls::ca::Ca::load(&p)?;
                    Outcome::Unchanged
                } else {
                    crate::tls::ca::Ca::init(&p, names, false)?;
                    Outcome::Changed
                };
                (format!("interception CA in {}", dir.display()), outcome)
            }
            Step::CaCopy { ca_dir, path, mode } => {
                let ca = crate::tls::ca::Ca::load(&under(root, ca_dir))?;
                (
                    format!("CA certificate {}", path.display()),
                    write_file(&under(root, path), *mode, ca.cert_pem().as_bytes())?,
                )
            }
            Step::EnvBlock { path, vars } => {
                let p = under(root, path);
                let old = match fs::read_to_string(&p) {
                    Ok(t) => Some(t),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
                };
                let new = with_env_block(old.as_deref().unwrap_or(""), vars);
                let outcome = if old.as_deref() == Some(new.as_str()) {
                    Outcome::Unchanged
                } else {
                    replace_keeping_owner(&p, new.as_bytes())?;
                    Outcome::Changed
                };
                (format!("runner environment {}", path.display()), outcome)
            }
            Step::RemoveEnvBlock { path } => {
                let p = under(root, path);
                let outcome = match fs::read_to_string(&p) {
                    Ok(old) => {
                        let new = without_env_block(&old);
                        if new == old {
                            Outcome::Unchanged
                        } else {
                            replace_keeping_owner(&p, new.as_bytes())?;
                            Outcome::Changed
                        }
                    }
                    Err(_) => Outcome::Unchanged,
                };
                (format!("runner environment {}", path.display()), outcome)
            }
            Step::Remove { path } => {
                let p = under(root, path);
                let outcome = match fs::remove_file(&p) {
                    Ok(()) => Outcome::Changed,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Unchanged,
                    Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
                };
                (format!("remove {}", path.display()), outcome)
            }
            Step::RemoveDir { path } => {
                let p = under(root, path);
                let outcome = if p.is_dir() && fs::remove_dir(&p).is_ok() {
                    Outcome::Changed
                } else {
                    Outcome::Unchanged
                };
                (format!("remove {} if empty", path.display()), outcome)
            }
            Step::RemoveTree { path } => {
                let p = under(root, path);
                let outcome = if p.exists() {
                    fs::remove_dir_all(&p).with_context(|| format!("cannot remove {}", p.display()))?;
                    Outcome::Changed
                } else {
                    Outcome::Unchanged
                };
                (format!("remove {}", path.display()), outcome)
            }
            Step::Run { argv, after, .. } => {
                let line = format!("run {}", shell_words(argv));
                if !live(root) {
                    (line, Outcome::NotRun("not at root /"))
                } else if !after.is_empty() && !after.iter().any(|a| changed.contains(a)) {
                    (line, Outcome::NotRun("nothing it follows changed"))
                } else {
                    let status = Command::new(&argv[0])
                        .args(&argv[1..])
                        .status()
                        .with_context(|| format!("cannot run {}", argv[0]))?;
                    if !status.success() {
                        bail!("`{}` failed ({status})", shell_words(argv));
                    }
                    (line, Outcome::Changed)
                }
            }
            Step::Detach { pin_dir } => {
                let line = format!("detach the programs pinned under {}", pin_dir.display());
                if !live(root) {
                    (line, Outcome::NotRun("not at root /"))
                } else if !pin_dir.exists() {
                    (line, Outcome::Unchanged)
                } else {
                    crate::redirect::detach(&crate::redirect::Pins::new(pin_dir))?;
                    (line, Outcome::Changed)
                }
            }
            Step::PinKey { record_dir, sink } => {
                use crate::record::sink::{Pin, pin_now};
                let dir = under(root, record_dir);
                fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
                let key = crate::record::store::load_or_create_key(&crate::record::store::key_path(&dir))?;
                let line = format!(
                    "record key pinned in the sink as {}/{}/runner.pub",
                    sink.bucket,
                    sink.runner()
                );
                match pin_now(sink, root, &key)? {
                    Pin::Pinned => (line, Outcome::Changed),
                    Pin::Same => (line, Outcome::Unchanged),
                    Pin::Differs => bail!(
                        "the record sink already pins another key for runner {} ({}/{}/runner.pub), not this host's recorder key in {}: the pin is never replaced, this key was kept under keys/ and `ghgate sessions verify --remote` reports it. A rebuilt runner needs a prefix of its own",
                        sink.runner(),
                        sink.bucket,
                        sink.runner(),
                        record_dir.display()
                    ),
                }
            }
            Step::Note(n) => (format!("note: {n}"), Outcome::Noted),
        })
    }
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=@:".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes `content` with `mode` unless the file already has both; atomically (a temporary file
/// in the same directory, renamed over).
fn write_file(path: &Path, mode: u32, content: &[u8]) -> anyhow::Result<Outcome> {
    let same_content = fs::read(path).is_ok_and(|old| old == content);
    let same_mode = fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode);
    if same_content && same_mode {
        return Ok(Outcome::Unchanged);
    }
    if same_content {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        return Ok(Outcome::Changed);
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = tmp_beside(path);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(content)?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Outcome::Changed)
}

fn tmp_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".ghgate-tmp");
    path.with_file_name(name)
}

/// Replaces a file's content keeping its owner and mode (a runner's `.env` belongs to the
/// runner's user); a new file is made 0644.
fn replace_keeping_owner(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::metadata(path).ok();
    let mode = meta.as_ref().map_or(0o644, |m| m.permissions().mode() & 0o7777);
    write_file(path, mode, content)?;
    if let Some(m) = meta {
        std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid()))
            .with_context(|| format!("cannot give {} back to its owner", path.display()))?;
    }
    Ok(())
}

fn env_block(vars: &[(String, String)]) -> String {
    let mut s = format!("{ENV_BEGIN}\n");
    for (k, v) in vars {
        let _ = writeln!(s, "{k}={v}");
    }
    s.push_str(ENV_END);
    s.push('\n');
    s
}

/// The `.env` text with ghgate's block (replacing an older one), every other line kept. A
/// variable the file already sets outside the block is left to the file.
pub fn with_env_block(text: &str, vars: &[(String, String)]) -> String {
    let mut rest = without_env_block(text);
    let set_outside = |key: &str| {
        rest.lines()
            .any(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == key))
    };
    let vars: Vec<(String, String)> = vars.iter().filter(|(k, _)| !set_outside(k)).cloned().collect();
    if vars.is_empty() {
        return rest;
    }
    if !rest.is_empty() && !rest.ends_with('\n') {
        rest.push('\n');
    }
    rest + &env_block(&vars)
}

/// The `.env` text without ghgate's block.
pub fn without_env_block(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == ENV_BEGIN {
            inside = true;
            continue;
        }
        if inside {
            if bare == ENV_END {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests;
