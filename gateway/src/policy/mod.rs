//! The policy in the daemon: the model, its validation and evaluation are `ghgate-policy`'s
//! (pure, re-exported here); the daemon reads the file ([`load`]) and keeps it current
//! ([`live`]). Enforcement is `enforce`'s, approvals `approval`'s.
pub mod live;

use std::path::{Path, PathBuf};

pub use ghgate_policy::*;

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read policy {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Invalid(#[from] PolicyError),
}

/// Reads and validates a policy file.
pub fn load(path: &Path) -> Result<Policy, LoadError> {
    let text = read(path)?;
    Ok(Policy::parse(&text, path)?)
}

/// The file's text, or the error that names it.
fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}
