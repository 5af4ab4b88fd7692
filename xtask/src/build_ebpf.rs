//! `cargo xtask build-ebpf`: builds the eBPF object the way the gateway embeds it, and copies it
//! to `target/bpf/gateway-ebpf.o` for inspection (bpftool, llvm-objdump, veristat).
//!
//! gateway/build.rs (aya-build) is the one definition of how the object is built; this module only
//! finds the result in that build script's OUT_DIR. It must never compile the eBPF crate itself.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::{
    cargo::{self, Metadata},
    host, process, setup,
    workspace::Workspace,
};

/// The package whose build script builds the eBPF programs.
const PACKAGE: &str = "ghgate";
/// The object aya-build leaves in that build script's OUT_DIR (the eBPF crate's bin name).
const OBJECT: &str = "gateway-ebpf";

/// Build the eBPF programs (via the ghgate build script) and copy the object to
/// target/bpf/gateway-ebpf.o.
#[derive(clap::Args)]
pub struct Args {
    /// Also load every program into the kernel without attaching it (`ghgate check --kernel`)
    /// and fail if the verifier rejects one. Needs root.
    #[arg(long)]
    pub check: bool,
}

pub fn run(ws: &Workspace, args: Args) -> Result<()> {
    setup::ensure_setup(ws)?;
    build(ws, args.check)
}

/// The JSON message cargo prints when a build script has run (or was fresh).
#[derive(Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    package_id: String,
    #[serde(default)]
    out_dir: Option<PathBuf>,
}

/// Builds the object, copies it into `<target>/bpf/`, and with `check` runs the kernel verifier.
pub fn build(ws: &Workspace, check: bool) -> Result<()> {
    let metadata = Metadata::load(ws)?;
    let package_id = metadata.package_id(PACKAGE)?.to_owned();

    let mut out_dir = None;
    let mut cmd = cargo::command(
        ws,
        ["build", "-p", PACKAGE, "--message-format=json-render-diagnostics"],
    );
    process::run_lines("building the eBPF object", &mut cmd, |line| {
        // Lines that are not cargo messages (none expected) are not ours to interpret.
        if let Ok(msg) = serde_json::from_str::<Message>(line)
            && msg.reason == "build-script-executed"
            && msg.package_id == package_id
        {
            out_dir = msg.out_dir;
        }
    })?;
    let out_dir = out_dir.with_context(|| {
        format!(
            "cargo reported no build-script output for {PACKAGE}; does gateway/build.rs still run aya-build?"
        )
    })?;

    copy_object(ws, &out_dir, &metadata.target_dir)?;
    if check {
        kernel_check(ws, &metadata.target_dir)?;
    }
    Ok(())
}

fn copy_object(ws: &Workspace, out_dir: &Path, target_dir: &Path) -> Result<()> {
    let src = out_dir.join(OBJECT);
    if !src.is_file() {
        bail!(
            "{} does not exist: the {PACKAGE} build script ran but left no eBPF object \
             (is AYA_BUILD_SKIP set?)",
            src.display()
        );
    }
    let dir = target_dir.join("bpf");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dst = dir.join(format!("{OBJECT}.o"));
    let size =
        fs::copy(&src, &dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    println!("eBPF object: {} ({size} bytes)", ws.display(&dst));
    Ok(())
}

fn kernel_check(ws: &Workspace, target_dir: &Path) -> Result<()> {
    if !host::is_root() {
        bail!("build-ebpf --check loads programs into the kernel and needs root; run it as root");
    }
    let ghgate = target_dir.join("debug").join(PACKAGE);
    if !ghgate.is_file() {
        bail!(
            "{} was not built; cannot run the verifier check",
            ws.display(&ghgate)
        );
    }
    process::run(
        "verifier check (ghgate check --kernel --kernel-only)",
        Command::new(&ghgate).args(["check", "--kernel", "--kernel-only"]),
    )
}
