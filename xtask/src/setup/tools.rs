//! Tools installed with `cargo install`: bpf-linker (pinned, built against the pinned LLVM),
//! cargo-nextest and cargo-fuzz.
//!
//! Must never replace a bpf-linker that already reports the pinned version.
use std::process::Command;

use anyhow::{Result, bail};

use crate::{cargo, process, workspace::Workspace};

/// The version line of the bpf-linker on PATH, if it runs at all.
fn bpf_linker_version() -> Option<String> {
    process::probe_stdout(Command::new("bpf-linker").arg("--version")).map(|out| out.trim().to_owned())
}

fn bpf_linker_ok(ws: &Workspace) -> bool {
    // Compare whole words so 0.13.0 does not match 0.13.01.
    bpf_linker_version().is_some_and(|v| v.split_whitespace().any(|w| w == ws.pins.bpf_linker))
}

/// The first line of `cargo nextest --version` (run through the stable pin), if it runs.
fn nextest_version(ws: &Workspace) -> Option<String> {
    process::probe_stdout(&mut cargo::command(ws, ["nextest", "--version"]))
        .and_then(|out| out.lines().next().map(|l| l.trim().to_owned()))
}

/// The first line of `cargo fuzz --version`, if it runs. cargo-fuzz runs under any toolchain;
/// only the targets it builds need the nightly pin.
fn cargo_fuzz_version(ws: &Workspace) -> Option<String> {
    process::probe_stdout(&mut cargo::command(ws, ["fuzz", "--version"]))
        .and_then(|out| out.lines().next().map(|l| l.trim().to_owned()))
}

pub fn missing(ws: &Workspace) -> Vec<String> {
    let mut missing = Vec::new();
    if !bpf_linker_ok(ws) {
        missing.push(format!("bpf-linker {}", ws.pins.bpf_linker));
    }
    if nextest_version(ws).is_none() {
        missing.push("cargo-nextest".to_owned());
    }
    if cargo_fuzz_version(ws).is_none() {
        missing.push("cargo-fuzz".to_owned());
    }
    missing
}

pub fn ensure_bpf_linker(ws: &Workspace) -> Result<()> {
    let pin = &ws.pins.bpf_linker;
    let llvm = &ws.pins.llvm_major;
    if bpf_linker_ok(ws) {
        println!("ok: bpf-linker {pin} present");
        return Ok(());
    }
    let found = bpf_linker_version().unwrap_or_else(|| "none".to_owned());
    println!("installing: bpf-linker {pin} for LLVM {llvm} (found: {found})");
    let mut cmd = cargo::command(
        ws,
        [
            "install",
            "bpf-linker",
            "--version",
            &format!("={pin}"),
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm}"),
            "--locked",
        ],
    );
    cmd.env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"));
    process::run("installing bpf-linker", &mut cmd)?;
    if !bpf_linker_ok(ws) {
        let found = bpf_linker_version().unwrap_or_else(|| "nothing runnable".to_owned());
        bail!(
            "installed bpf-linker {pin}, but `bpf-linker --version` on PATH reports {found}; \
             put the cargo bin directory (usually ~/.cargo/bin) first on PATH"
        );
    }
    Ok(())
}

pub fn ensure_nextest(ws: &Workspace) -> Result<()> {
    if let Some(version) = nextest_version(ws) {
        println!("ok: {version} present");
        return Ok(());
    }
    println!("installing: cargo-nextest");
    cargo::run(
        ws,
        "installing cargo-nextest",
        ["install", "cargo-nextest", "--locked"],
    )
}

pub fn ensure_cargo_fuzz(ws: &Workspace) -> Result<()> {
    if let Some(version) = cargo_fuzz_version(ws) {
        println!("ok: {version} present");
        return Ok(());
    }
    println!("installing: cargo-fuzz");
    cargo::run(ws, "installing cargo-fuzz", ["install", "cargo-fuzz", "--locked"])
}
