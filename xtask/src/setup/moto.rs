//! The S3-compatible server the record sink's tests run: moto (`moto[server]` from PyPI, pinned
//! in `[workspace.metadata.ghgate] moto`), in a virtualenv of its own at
//! `~/.cache/ghgate/moto-<version>` (the tests find it there, or at `$GHGATE_MOTO_VENV`).
//!
//! Chosen because it implements S3 Object Lock (retention per object, locked versions refused
//! deletion), which the sink's guarantees rest on. Must never touch a Python outside that
//! virtualenv.
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::{process, workspace::Workspace};

pub fn venv(ws: &Workspace) -> PathBuf {
    if let Ok(v) = std::env::var("GHGATE_MOTO_VENV") {
        return v.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(format!(".cache/ghgate/moto-{}", ws.pins.moto))
}

fn installed(ws: &Workspace) -> Option<String> {
    let python = venv(ws).join("bin/python");
    process::probe_stdout(
        Command::new(python).args(["-c", "import moto, boto3, flask; print(moto.__version__)"]),
    )
    .map(|v| v.trim().to_owned())
}

pub fn missing(ws: &Workspace) -> Vec<String> {
    if installed(ws).as_deref() == Some(ws.pins.moto.as_str()) {
        Vec::new()
    } else {
        vec![format!("moto[server] {}", ws.pins.moto)]
    }
}

pub fn ensure(ws: &Workspace) -> Result<()> {
    let pin = &ws.pins.moto;
    if missing(ws).is_empty() {
        println!("ok: moto[server] {pin} present");
        return Ok(());
    }
    let dir = venv(ws);
    println!("installing: moto[server] {pin} in {}", dir.display());
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let status = Command::new("python3").arg("-m").arg("venv").arg(&dir).status()?;
    if !status.success() {
        bail!(
            "python3 -m venv {} failed (Debian: apt-get install python3-venv)",
            dir.display()
        );
    }
    let status = Command::new(dir.join("bin/pip"))
        .args(["install", "-q", &format!("moto[server]=={pin}")])
        .status()?;
    if !status.success() {
        bail!("pip install moto[server]=={pin} failed");
    }
    Ok(())
}
