//! The tools benchmarks compare ghgate with, installed from PyPI on first use into a virtualenv of
//! their own under `target/bench/`. Must never install into the system's Python or anywhere
//! outside the target directory.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The executable `exe` of PyPI package `package`, installed into `target_dir/bench/<venv>` if it
/// is not there yet.
pub fn tool(target_dir: &Path, venv: &str, package: &str, exe: &str) -> anyhow::Result<PathBuf> {
    let venv = target_dir.join("bench").join(venv);
    let path = venv.join("bin").join(exe);
    if path.exists() {
        return Ok(path);
    }
    eprintln!("installing {package} from PyPI into {} (once)", venv.display());
    let ok = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()?
        .success()
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", package])
            .status()?
            .success();
    anyhow::ensure!(
        ok && path.exists(),
        "could not install {package} (python3 -m venv {}, pip install {package})",
        venv.display()
    );
    Ok(path)
}
