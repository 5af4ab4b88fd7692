//! Where the workspace is and which toolchains it pins.
//!
//! The pins are read from `[workspace.metadata.ghgate]` in the root Cargo.toml, the one place they
//! are defined (gateway/build.rs reads the same table). This module must never hard-code a version.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::Deserialize;

/// The workspace root and its toolchain pins.
pub struct Workspace {
    pub root: PathBuf,
    pub pins: Pins,
}

/// `[workspace.metadata.ghgate]` of the root Cargo.toml.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Pins {
    /// Userspace toolchain for every cargo invocation xtask makes, but cargo-fuzz's.
    pub stable_toolchain: String,
    /// Nightly used by gateway/build.rs to build the eBPF programs, and by cargo-fuzz.
    pub ebpf_toolchain: String,
    /// Exact bpf-linker version.
    pub bpf_linker: String,
    /// LLVM major version bpf-linker is built against.
    pub llvm_major: String,
    /// moto (PyPI), the S3-compatible server with Object Lock the record sink's tests run.
    pub moto: String,
}

#[derive(Deserialize)]
struct Manifest {
    workspace: WorkspaceTable,
}

#[derive(Deserialize)]
struct WorkspaceTable {
    metadata: MetadataTable,
}

#[derive(Deserialize)]
struct MetadataTable {
    ghgate: Pins,
}

impl Workspace {
    pub fn load() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask/ has no parent directory")?
            .to_path_buf();
        let manifest = root.join("Cargo.toml");
        let text =
            fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
        let parsed: Manifest = toml::from_str(&text).with_context(|| {
            format!(
                "{} must have a [workspace.metadata.ghgate] table with stable-toolchain, \
                 ebpf-toolchain, bpf-linker and llvm-major",
                manifest.display()
            )
        })?;
        Ok(Self {
            root,
            pins: parsed.workspace.metadata.ghgate,
        })
    }

    /// `path` relative to the workspace root when it is inside it, for shorter messages.
    pub fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}
