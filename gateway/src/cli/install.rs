//! `ghgate install` and `ghgate uninstall`: the systemd unit, the config, the CA in the trust
//! stores and the runners' `.env` (see [`crate::install`] for the plan and how it is applied).
//!
//! Non-interactive: everything comes from the flags, and the exit code says how it went (0 done,
//! 1 a step failed, 2 bad flags or an invalid existing config).
use std::{path::PathBuf, process::ExitCode};

use anyhow::bail;

use crate::install::{self, Mode, Outcome, Plan, Request};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["runner", "host"])))]
pub struct Args {
    /// Govern the Actions runner services (`actions.runner.*.service`): each is moved into
    /// ghgate.slice (a drop-in), which the programs are attached to.
    #[arg(long)]
    runner: bool,
    /// Govern every process of this host (whole-host mode: the recommendation for dedicated
    /// runners, where it also covers every container).
    #[arg(long)]
    host: bool,
    /// With --runner: attach to container runtimes' scopes (Docker, containerd) as they appear.
    #[arg(long, requires = "runner")]
    containers: bool,
    /// A runner directory whose `.env` gets the CA variables (besides those the units name).
    #[arg(long = "runner-dir", value_name = "DIR")]
    runner_dirs: Vec<PathBuf>,
    #[command(flatten)]
    common: Common,
    /// The binary installed as /usr/local/bin/ghgate (default: this one).
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// Also remove the state directory: the recordings, the recorder's key and the CA.
    #[arg(long)]
    purge: bool,
    /// Keep /etc/ghgate/ghgate.toml.
    #[arg(long)]
    keep_config: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Print every file and command, and do nothing.
    #[arg(long)]
    dry_run: bool,
    /// Install under this directory instead of `/` (files only: commands are not run).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let binary = match args.binary {
        Some(b) => b,
        None => std::env::current_exe()?,
    };
    let plan = install::install_plan(&Request {
        root: args.common.root.clone(),
        mode: if args.runner { Mode::Runner } else { Mode::Host },
        binary,
        containers: args.containers,
        runner_dirs: args.runner_dirs,
    })?;
    execute(&plan, args.common.dry_run, "install")
}

pub fn run_uninstall(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    let plan = install::uninstall_plan(&args.common.root, args.purge, args.keep_config)?;
    execute(&plan, args.common.dry_run, "uninstall")
}

fn execute(plan: &Plan, dry_run: bool, what: &str) -> anyhow::Result<ExitCode> {
    if dry_run {
        print!("{}", plan.describe());
        println!("(dry run: nothing was done)");
        return Ok(ExitCode::SUCCESS);
    }
    if plan.root == std::path::Path::new("/") && !nix::unistd::geteuid().is_root() {
        bail!(
            "ghgate {what} changes system files: run it with sudo (or see what it would do with --dry-run)"
        );
    }
    let done = plan.apply()?;
    let changed = done.iter().filter(|(_, o)| *o == Outcome::Changed).count();
    for (line, outcome) in &done {
        match outcome {
            Outcome::Changed => println!("done       {line}"),
            Outcome::Unchanged => println!("unchanged  {line}"),
            Outcome::NotRun(why) => println!("not run    {line} ({why})"),
            Outcome::Noted => println!("           {line}"),
        }
    }
    println!("{what}: {changed} changes");
    Ok(ExitCode::SUCCESS)
}
