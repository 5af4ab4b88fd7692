//! The fingerprint key: 32 random bytes in `<state_dir>/mask/fingerprint.key`, created at first
//! start. It stays on this host: records carry fingerprints, never the key, so a fingerprint
//! cannot be tested against guessed secrets by anyone who holds only the records.
use std::path::{Path, PathBuf};

use crate::keyfile::{self, KeyFileError};
use ghgate_mask::FingerprintKey;

/// Where the key lives under the state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("mask").join("fingerprint.key")
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the masking fingerprint key: {0}")]
    File(#[from] KeyFileError),
    #[error("the masking fingerprint key {} is {len} bytes long, not 32; remove it to make a new one (fingerprints will change)", path.display())]
    Length { path: PathBuf, len: usize },
}

/// Loads the key, creating it if it does not exist yet.
pub fn load_or_create(state_dir: &Path) -> Result<FingerprintKey, KeyError> {
    let path = path(state_dir);
    let bytes = keyfile::load_or_create(&path, || {
        let mut key = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut key);
        key.to_vec()
    })?;
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
        path: path.clone(),
        len: bytes.len(),
    })?;
    Ok(FingerprintKey::new(key))
}

use rand_core::RngCore as _;
