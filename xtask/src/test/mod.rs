//! `cargo xtask test`: the whole check suite, the same locally and in CI (`.ci/run`).
//!
//! Steps run in a fixed order and stop at the first failure, except that nextest, the fuzz run,
//! vm-test and the kernel leak check all run once the build is done: a failed test is exactly when
//! leftovers are likely, and one suite's failure says nothing about the others'.
//! This module must never skip a kernel step silently: skips are printed, and under CI they fail.
mod junit;
mod leaks;

use std::ffi::OsString;

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{build_ebpf, cargo, fuzz, host, setup, vm_test, workspace::Workspace};

/// Run fmt, clippy, the build, the eBPF verifier check, all tests (nextest), every fuzz target
/// for 45 s, the guest tests in QEMU on the CI kernels (vm-test) and a kernel leak check.
///
/// The verifier check, vm-test and the program part of the leak check run only as root; without
/// root they are skipped with a note, except under CI=true where that is an error.
#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo nextest run`, after `--` (for example a test filter).
    #[arg(last = true, value_name = "NEXTEST_ARGS")]
    pub nextest_args: Vec<OsString>,
}

const STEPS: usize = 8;

/// How long the fuzz step runs each target: long enough to get past the seeds' neighbourhood,
/// short enough that the step costs about as much as its build. `cargo xtask fuzz` runs longer.
const FUZZ_SECONDS: u32 = 45;

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
    let report = ws.root.join(junit::REPORT);
    // A report left by an earlier run must not be read as this one's.
    let _ = std::fs::remove_file(&report);
    let tests = cargo::run(ws, "nextest", nextest);
    let failed_tests = junit::read(&report);

    // Needs no privileges, so it runs the same as root or not.
    header(6, "fuzz");
    let fuzzing = fuzz::check(ws, FUZZ_SECONDS);

    header(7, "vm-test");
    let vm_tests = vm_tests(ws);

    header(8, "leak check");
    let leftovers = leaks::check();

    println!();
    let mut failures = Vec::new();
    match &tests {
        Ok(()) => println!("nextest: passed"),
        Err(err) => {
            println!("nextest: FAILED ({err:#})");
            failures.push("nextest failed".to_owned());
        }
    }
    print_failed_tests(ws, &failed_tests);
    match &fuzzing {
        Ok(()) => println!("fuzz: passed ({FUZZ_SECONDS} s per target)"),
        Err(err) => {
            println!("fuzz: FAILED ({err:#})");
            failures.push(format!("fuzz: {err:#}"));
        }
    }
    match &vm_tests {
        None => println!("vm-test: skipped (not root)"),
        Some(Ok(())) => println!("vm-test: passed"),
        Some(Err(err)) => {
            println!("vm-test: FAILED ({err:#})");
            failures.push(format!("{err:#}"));
        }
    }
    if leftovers.is_empty() {
        println!("leak check: clean");
    } else {
        println!("leak check: FAILED");
        for leftover in &leftovers {
            println!("  {leftover}");
        }
        failures.push(format!("leak check failed: {}", leftovers.join("; ")));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// Each failed or flaky test of the nextest run, with the end of its output.
fn print_failed_tests(ws: &Workspace, report: &Result<Vec<junit::Failed>>) {
    let failed = match report {
        Ok(failed) => failed,
        Err(err) => {
            println!("  (no test report: {err:#})");
            return;
        }
    };
    for test in failed {
        let what = if test.failed {
            "FAILED"
        } else {
            "FLAKY (passed on retry)"
        };
        println!("  {what}: {} ({})", test.name, test.how);
        for line in &test.panic {
            println!("    ! {line}");
        }
        if !test.tail.is_empty() {
            println!("    what it printed last:");
        }
        for line in &test.tail {
            println!("    | {line}");
        }
    }
    if !failed.is_empty() {
        println!("  (whole report: {})", ws.display(&ws.root.join(junit::REPORT)));
    }
}

/// The guest tests on the CI kernels, or `None` when skipped (not root, not CI).
fn vm_tests(ws: &Workspace) -> Option<Result<()>> {
    if !host::is_root() {
        if host::is_ci() {
            return Some(Err(anyhow!(
                "vm-test: CI must run as root to run the guest tests in QEMU"
            )));
        }
        println!(
            "note: not root, so the guest tests in QEMU are skipped; \
             `cargo xtask vm-test` runs them on their own"
        );
        return None;
    }
    Some(vm_test::check(ws, &vm_test::Options::ci()))
}
