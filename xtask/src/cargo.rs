//! The one way xtask invokes cargo: `cargo +<stable-toolchain> …` from the workspace root, or
//! `cargo +<ebpf-toolchain> …` for the one tool that needs a nightly (cargo-fuzz).
//!
//! `RUSTUP_TOOLCHAIN` is removed from the child so the `+toolchain` pin always wins. Nothing else
//! in xtask may build a `cargo` command by hand.
use std::{ffi::OsStr, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::{process, workspace::Workspace};

/// A `cargo +<stable>` command with `args`, run from the workspace root. Not yet started.
pub fn command<I, S>(ws: &Workspace, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    with_toolchain(ws, &ws.pins.stable_toolchain, args)
}

/// A `cargo +<ebpf-toolchain>` command, for cargo-fuzz: its sanitizer-coverage flags are
/// nightly-only, and reusing the eBPF pin keeps the machine at one nightly. Not yet started.
pub fn nightly_command<I, S>(ws: &Workspace, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    with_toolchain(ws, &ws.pins.ebpf_toolchain, args)
}

fn with_toolchain<I, S>(ws: &Workspace, toolchain: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{toolchain}"))
        .args(args)
        .current_dir(&ws.root)
        .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// Prints and runs `cargo +<stable> args…`; a non-zero exit is an error naming `step`.
pub fn run<I, S>(ws: &Workspace, step: &str, args: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    process::run(step, &mut command(ws, args))
}

/// The parts of `cargo metadata` xtask needs.
pub struct Metadata {
    pub target_dir: PathBuf,
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct RawMetadata {
    target_directory: PathBuf,
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    id: String,
}

impl Metadata {
    /// `cargo metadata --no-deps`, so the target directory honours CARGO_TARGET_DIR and config.
    pub fn load(ws: &Workspace) -> Result<Self> {
        let mut cmd = command(ws, ["metadata", "--format-version=1", "--no-deps"]);
        let output = cmd
            .output()
            .with_context(|| format!("could not start `{}`", process::display(&cmd)))?;
        if !output.status.success() {
            bail!(
                "`{}` failed ({}):\n{}",
                process::display(&cmd),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let raw: RawMetadata =
            serde_json::from_slice(&output.stdout).context("parsing `cargo metadata` output")?;
        Ok(Self {
            target_dir: raw.target_directory,
            packages: raw.packages,
        })
    }

    /// The package id cargo uses for `name` in JSON messages.
    pub fn package_id(&self, name: &str) -> Result<&str> {
        self.packages
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.id.as_str())
            .with_context(|| format!("package `{name}` is not a member of the workspace"))
    }
}
