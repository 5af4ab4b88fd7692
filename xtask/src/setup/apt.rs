//! Debian packages: LLVM and libclang for building bpf-linker, bpftool for the leak check,
//! iproute2, curl, git and pkg-config for the tests, QEMU and musl-gcc for the kernel-matrix tests
//! (vm-test), headless Chromium and a font for rendering the HTML session export, g++ for the
//! libFuzzer runtime of the fuzz targets, Go for doctor's Go client check.
//!
//! Only installs, never removes or upgrades. Without root it must not try `sudo` itself: it fails
//! naming the exact command for the user to run.
use std::process::Command;

use anyhow::{Result, bail};

use crate::{host, process, workspace::Workspace};

fn packages(ws: &Workspace) -> Vec<String> {
    let llvm = &ws.pins.llvm_major;
    let mut packages = vec![format!("llvm-{llvm}-dev"), format!("libclang-{llvm}-dev")];
    packages.extend(["bpftool", "iproute2", "curl", "git", "pkg-config"].map(String::from));
    // vm-test boots its guests with qemu-system-x86_64. Its guest binaries target musl, and C
    // code in dependencies (ring) needs x86_64-linux-musl-gcc for that target.
    packages.extend(["qemu-system-x86", "musl-tools"].map(String::from));
    // The systemd guest's root filesystem: Debian built by mmdebstrap, made into an ext4 image
    // (mke2fs -d) and given this run's binaries (debugfs), with no loop mount.
    packages.extend(["mmdebstrap", "e2fsprogs"].map(String::from));
    // The HTML export is checked by rendering it in headless Chromium, which needs a font.
    packages.extend(["chromium", "fonts-dejavu-core"].map(String::from));
    // libfuzzer-sys compiles libFuzzer (C++) for the fuzz targets.
    packages.push("g++".to_owned());
    // The record sink's tests run moto (PyPI) in a virtualenv of its own.
    packages.extend(["python3", "python3-venv"].map(String::from));
    // `ghgate doctor` checks that Go programs (gh, and a job's own) trust the CA with a real Go
    // client; its test needs the toolchain.
    packages.push("golang-go".to_owned());
    packages
}

fn installed(package: &str) -> bool {
    process::probe_stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

pub fn missing(ws: &Workspace) -> Vec<String> {
    packages(ws)
        .into_iter()
        .filter(|p| !installed(p))
        .map(|p| format!("apt package {p}"))
        .collect()
}

pub fn ensure(ws: &Workspace) -> Result<()> {
    let mut missing = Vec::new();
    for package in packages(ws) {
        if installed(&package) {
            println!("ok: apt package {package} installed");
        } else {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if process::probe(Command::new("dpkg-query").arg("--version")).is_none() {
        bail!(
            "dpkg-query not found: setup installs system packages on Debian/Ubuntu only; \
             install these yourself: {}",
            missing.join(" ")
        );
    }
    let list = missing.join(" ");
    if !host::is_root() {
        bail!(
            "missing Debian packages: {list}. Install them as root:\n  \
             sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y \
             --no-install-recommends {list}\nthen run `cargo xtask setup` again"
        );
    }
    println!("installing: apt packages {list}");
    process::run("apt-get update", Command::new("apt-get").arg("update"))?;
    process::run(
        "apt-get install",
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}
