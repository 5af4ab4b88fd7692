//! `cargo xtask test`: the whole check suite, the same locally and in CI (`.ci/run`).
//!
//! Steps run in a fixed order and stop at the first failure, except that the kernel leak check
//! always runs after nextest, because a failed test is exactly when leftovers are likely.
//! This module must never skip a kernel step silently: skips are printed, and under CI they fail.
mod leaks;

use std::ffi::OsString;

use anyhow::{Context as _, Result, bail};

use crate::{build_ebpf, cargo, host, setup, workspace::Workspace};

/// Run fmt, clippy, the build, the eBPF verifier check, all tests (nextest) and a kernel leak check.
///
/// The verifier check and the program part of the leak check need root; without root they are
/// skipped with a note, except under CI=true where that is an error.
#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo nextest run`, after `--` (for example a test filter).
    #[arg(last = true, value_name = "NEXTEST_ARGS")]
    pub nextest_args: Vec<OsString>,
}

const STEPS: usize = 6;

fn header(n: usize, name: &str) {
    println!("\n==> [{n}/{STEPS}] {name}");
}

pub fn run(ws: &Workspace, args: Args) -> Result<()> {
    setup::ensure_setup(ws)?;

    header(1, "fmt");
    cargo::run(ws, "fmt", ["fmt", "--all", "--check"])
        .context("code is not formatted: run `cargo fmt --all`")?;

    header(2, "clippy");
    cargo::run(
        ws,
        "clippy",
        [
            "clippy",
            "--workspace",
            "--exclude",
            "gateway-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;

    // Also produces target/debug/ghgate, which the end-to-end tests spawn. gateway-ebpf only
    // builds for bpfel-unknown-none, through gateway/build.rs.
    header(3, "build");
    cargo::run(ws, "build", ["build", "--workspace", "--exclude", "gateway-ebpf"])?;

    header(4, "build-ebpf --check");
    let root = host::is_root();
    if !root && host::is_ci() {
        bail!("build-ebpf --check: CI must run as root to load the eBPF programs into the kernel");
    }
    if !root {
        println!("note: not root, so the kernel verifier check is skipped (only the object is built)");
    }
    build_ebpf::build(ws, root).context("build-ebpf --check")?;

    header(5, "nextest");
    // The environment (CI included) is inherited, so tests see the same CI flag as xtask.
    let mut nextest: Vec<OsString> = [
        "nextest",
        "run",
        "--workspace",
        "--exclude",
        "gateway-ebpf",
        "--no-fail-fast",
    ]
    .map(OsString::from)
    .into();
    nextest.extend(args.nextest_args);
    let tests = cargo::run(ws, "nextest", nextest);

    header(6, "leak check");
    let leftovers = leaks::check();

    println!();
    match &tests {
        Ok(()) => println!("nextest: passed"),
        Err(err) => println!("nextest: FAILED ({err:#})"),
    }
    if leftovers.is_empty() {
        println!("leak check: clean");
    } else {
        println!("leak check: FAILED");
        for leftover in &leftovers {
            println!("  {leftover}");
        }
    }
    match (tests.is_ok(), leftovers.is_empty()) {
        (true, true) => Ok(()),
        (false, true) => bail!("nextest failed"),
        (true, false) => bail!("leak check failed: {}", leftovers.join("; ")),
        (false, false) => bail!(
            "nextest failed and the leak check failed: {}",
            leftovers.join("; ")
        ),
    }
}
