//! `ghgate exec -- CMD ARGS…`: run a command inside the intercepted cgroup.
//!
//! The process moves itself into the cgroup and then becomes the command (exec), so the exit
//! status is the command's own. It refuses when nothing is attached: a command that believes it
//! is intercepted but is not would be worse than one that does not run.
//!
//! Moving a process into a cgroup needs root, so people run this with sudo; the command then
//! runs as the user who invoked sudo (`SUDO_UID`/`SUDO_GID`, with that user's groups, `HOME`,
//! `USER` and `LOGNAME`), not as root, unless `--keep-root` says otherwise. A command running as
//! root in the cgroup could detach the programs or leave the cgroup: ghgate promises nothing
//! against root.
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
    /// Run the command as root even when started through sudo (by default it runs as the user
    /// who invoked sudo).
    #[arg(long)]
    keep_root: bool,
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
    let mut command = std::process::Command::new(program);
    command.args(rest);
    if !args.keep_root
        && nix::unistd::geteuid().is_root()
        && let Some(user) = sudo_user()?
    {
        drop_to(&user, &mut command)?;
    }
    let err = command.exec();
    Err(err).with_context(|| format!("cannot run {}", program.to_string_lossy()))
}

/// The user who invoked sudo, if this process runs through sudo as root.
fn sudo_user() -> anyhow::Result<Option<nix::unistd::User>> {
    let Some(uid) = std::env::var_os("SUDO_UID") else {
        return Ok(None);
    };
    let uid: u32 = uid
        .to_str()
        .and_then(|u| u.parse().ok())
        .context("SUDO_UID is not a number")?;
    if uid == 0 {
        return Ok(None);
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .context("cannot read the password database")?
        .with_context(|| format!("SUDO_UID {uid} has no password entry; use --keep-root to run as root"))?;
    Ok(Some(user))
}

/// Gives up root for `user` (its groups, then its gid, then its uid), and points the command's
/// environment at it.
fn drop_to(user: &nix::unistd::User, command: &mut std::process::Command) -> anyhow::Result<()> {
    use nix::unistd::{Gid, setgid, setuid};
    let gid = std::env::var("SUDO_GID")
        .ok()
        .and_then(|g| g.parse().ok())
        .map(Gid::from_raw)
        .unwrap_or(user.gid);
    let name = std::ffi::CString::new(user.name.as_str()).context("user name with a NUL byte")?;
    nix::unistd::initgroups(&name, gid).with_context(|| format!("cannot take {}'s groups", user.name))?;
    setgid(gid).with_context(|| format!("cannot change to gid {gid}"))?;
    setuid(user.uid).with_context(|| format!("cannot change to {} (uid {})", user.name, user.uid))?;
    if setuid(nix::unistd::Uid::from_raw(0)).is_ok() {
        bail!(
            "root could be regained after dropping to {}: refusing to run",
            user.name
        );
    }
    command
        .env("HOME", &user.dir)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name);
    Ok(())
}
