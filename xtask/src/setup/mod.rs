//! `cargo xtask setup`: installs what building and testing ghgate needs, idempotently.
//!
//! Order matters: Debian packages (LLVM for bpf-linker), then rustup toolchains (the stable pin runs
//! `cargo install`), then cargo-installed tools. Each step prints one line per thing it checks.
//! Setup must never upgrade or remove something that already satisfies a pin.
mod apt;
mod moto;
mod rustup;
mod tools;

use anyhow::{Result, bail};

use crate::{vm_test, workspace::Workspace};

/// Install the pinned toolchains (with the musl target), bpf-linker, cargo-nextest, cargo-fuzz,
/// the Debian packages ghgate needs (QEMU included) and moto, the S3 server the sink's tests run.
///
/// Safe to run repeatedly: anything already present is reported as "ok" and left alone.
/// Installing Debian packages needs root.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(ws: &Workspace, Args {}: Args) -> Result<()> {
    setup(ws)
}

/// The quick check used by the other subcommands: runs the full setup only if something is missing.
pub fn ensure_setup(ws: &Workspace) -> Result<()> {
    let missing = missing(ws);
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "setup: missing {}; running `cargo xtask setup`",
        missing.join(", ")
    );
    setup(ws)
}

fn setup(ws: &Workspace) -> Result<()> {
    apt::ensure(ws)?;
    for toolchain in toolchains(ws) {
        rustup::ensure(&toolchain)?;
    }
    tools::ensure_bpf_linker(ws)?;
    tools::ensure_nextest(ws)?;
    tools::ensure_cargo_fuzz(ws)?;
    moto::ensure(ws)?;

    let missing = missing(ws);
    if !missing.is_empty() {
        bail!("setup ran but these are still missing: {}", missing.join(", "));
    }
    Ok(())
}

/// Everything setup would install, checked without printing or changing anything.
fn missing(ws: &Workspace) -> Vec<String> {
    let mut missing = apt::missing(ws);
    for toolchain in toolchains(ws) {
        missing.extend(rustup::missing(&toolchain));
    }
    missing.extend(tools::missing(ws));
    missing.extend(moto::missing(ws));
    missing
}

fn toolchains(ws: &Workspace) -> [rustup::Toolchain<'_>; 2] {
    [
        // The musl target: vm-test's guest binaries are static.
        rustup::Toolchain {
            name: &ws.pins.stable_toolchain,
            components: &["clippy", "rustfmt"],
            targets: &[vm_test::GUEST_TARGET],
        },
        // rust-src: the eBPF build uses -Z build-std=core. cargo-fuzz needs nothing more: the
        // ASan runtime ships in rust-std, and llvm-tools only serves `cargo fuzz coverage`.
        rustup::Toolchain {
            name: &ws.pins.ebpf_toolchain,
            components: &["rust-src"],
            targets: &[],
        },
    ]
}
