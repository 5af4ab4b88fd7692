//! `cargo xtask bench`: builds the workspace in release mode and runs one benchmark of the
//! `ghgate-bench` binary (tests crate).
//!
//! Benchmarks print ratios against a baseline measured in the same run; this module only builds
//! and launches them. It must never interpret or threshold their results.
use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{Result, bail};

use crate::{cargo, process, setup, workspace::Workspace};

/// The benchmark binary, a `[[bin]]` of the tests crate.
const BENCH_BIN: &str = "ghgate-bench";

/// Build the workspace (release) and run one benchmark with `ghgate-bench <NAME>`.
#[derive(clap::Args)]
pub struct Args {
    /// The benchmark to run (see `target/release/ghgate-bench --help`).
    pub name: String,
    /// Arguments for the benchmark (`cargo xtask bench soak --minutes 2`; a `--` before them
    /// is accepted too).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
    pub args: Vec<OsString>,
}

pub fn run(ws: &Workspace, args: Args) -> Result<()> {
    setup::ensure_setup(ws)?;
    // gateway-ebpf only builds for bpfel-unknown-none, through gateway/build.rs.
    cargo::run(
        ws,
        "release build of the workspace",
        ["build", "--release", "--workspace", "--exclude", "gateway-ebpf"],
    )?;
    let metadata = cargo::Metadata::load(ws)?;
    let binary = metadata.target_dir.join("release").join(BENCH_BIN);
    if !binary.is_file() {
        bail!(
            "{} was not built: the tests crate must define a `[[bin]] name = \"{BENCH_BIN}\"`",
            ws.display(&binary)
        );
    }
    let mut cmd = Command::new(&binary);
    let rest = match args.args.first() {
        Some(first) if first == "--" => &args.args[1..],
        _ => &args.args[..],
    };
    cmd.arg(&args.name).args(rest);
    println!("$ {}", process::display(&cmd));
    let err = cmd.exec();
    bail!("could not start {}: {err}", binary.display())
}
