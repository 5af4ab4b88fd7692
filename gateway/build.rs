//! Compiles the eBPF programs (gateway-ebpf) with the pinned nightly and embeds the object.
//!
//! This is the one definition of how the eBPF object is built: `cargo xtask build-ebpf` builds
//! this package and picks the object out of OUT_DIR. The toolchain pin lives in the workspace
//! Cargo.toml (`[workspace.metadata.ghgate]`).
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("gateway/ has no parent")?;
    let workspace_toml = root.join("Cargo.toml");
    println!("cargo:rerun-if-changed={}", workspace_toml.display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("gateway-common/src").display()
    );

    let text = fs::read_to_string(&workspace_toml)?;
    let doc: toml::Table = toml::from_str(&text)?;
    let toolchain = doc
        .get("workspace")
        .and_then(|w| w.get("metadata"))
        .and_then(|m| m.get("ghgate"))
        .and_then(|g| g.get("ebpf-toolchain"))
        .and_then(|t| t.as_str())
        .ok_or_else(|| {
            anyhow!(
                "workspace.metadata.ghgate.ebpf-toolchain missing in {}",
                workspace_toml.display()
            )
        })?
        .to_owned();

    if env::var_os("AYA_BUILD_SKIP").is_none() {
        preflight(&toolchain)?;
    }
    let ebpf_dir = root.join("gateway-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF programs failed; `cargo xtask setup` installs the toolchain")
}

/// Fails early with the fix, instead of a wall of rustup or linker errors.
fn preflight(toolchain: &str) -> anyhow::Result<()> {
    let ok = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--version"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        return Err(anyhow!(
            "the eBPF toolchain {toolchain} is not installed: run `cargo xtask setup` \
             (or `rustup toolchain install {toolchain} --component rust-src`)"
        ));
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !matches!(linker, Ok(ref o) if o.status.success()) {
        return Err(anyhow!("bpf-linker is not installed: run `cargo xtask setup`"));
    }
    Ok(())
}
