//! `ghgate exec -- CMD ARGS…`: run a command inside the intercepted cgroup.
//!
//! The process moves itself into the cgroup and then becomes the command (exec), so the exit
//! status is the command's own. It refuses when nothing is attached: a command that believes it
//! is intercepted but is not would be worse than one that does not run.
use std::{ffi::OsString, os::unix::process::CommandExt as _, process::ExitCode};

use anyhow::{Context as _, bail};

use super::ConfigArg;
use crate::{
    config::CgroupTarget,
    redirect::{Pins, cgroup},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<OsString>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let pins = Pins::new(&config.redirect.pin_dir);
    if !pins.attached() {
        bail!(
            "ghgate is not attached (no pinned programs in {}): start it with `ghgate run --config {}`",
            pins.root().display(),
            args.config.config.display()
        );
    }
    if let CgroupTarget::Path(_) = config.redirect.cgroup {
        let dir = cgroup::target_dir(&config.redirect.cgroup)?;
        cgroup::enter(&dir)?;
    }
    let (program, rest) = args.command.split_first().context("no command given")?;
    let err = std::process::Command::new(program).args(rest).exec();
    Err(err).with_context(|| format!("cannot run {}", program.to_string_lossy()))
}
