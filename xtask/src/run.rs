//! `cargo xtask run`: builds ghgate in release mode and runs it in the foreground with the
//! repository's default config.
//!
//! The gateway replaces this process (exec), so signals reach it directly and its exit status is
//! the command's. This module must never daemonise or detach the gateway.
use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{Result, bail};

use crate::{cargo, host, process, setup, workspace::Workspace};

/// Build ghgate (release) and run it in the foreground with gateway/config/default.toml.
///
/// Needs root: the gateway attaches eBPF programs to a cgroup.
#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `ghgate run`, after `--`.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<OsString>,
}

pub fn run(ws: &Workspace, args: Args) -> Result<()> {
    // Checked first: a release build is minutes wasted if the run cannot start.
    if !host::is_root() {
        bail!(
            "ghgate run attaches eBPF programs and needs root; \
             run `sudo -E cargo xtask run` or run it as root"
        );
    }
    println!("checking the toolchains (cargo xtask setup)");
    setup::ensure_setup(ws)?;
    println!("building ghgate (release)");
    cargo::run(
        ws,
        "release build of ghgate",
        ["build", "--release", "-p", "ghgate"],
    )?;

    let metadata = cargo::Metadata::load(ws)?;
    let binary = metadata.target_dir.join("release").join("ghgate");
    let config = ws.root.join("gateway/config/default.toml");
    let mut cmd = Command::new(&binary);
    cmd.arg("run").arg("--config").arg(&config).args(&args.args);
    println!("running ghgate in the foreground");
    println!("$ {}", process::display(&cmd));
    let err = cmd.exec();
    bail!("could not start {}: {err}", binary.display())
}
