//! Private key files: created whole with mode 0600, refused when group or others may access
//! them. Shared by every key the gateway keeps (the masking fingerprint key; more to follow).
//!
//! Must never create a key file readable by others, leave a half-written one, or name a key's
//! contents in an error.
use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{} is accessible to group or others (mode {mode:04o}); restrict it with: chmod 600 {}",
        path.display(),
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> KeyFileError + 'p {
    move |source| KeyFileError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The contents of a private file, refused if group or others may access it.
pub fn read_private(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let meta = fs::metadata(path).map_err(io_err("cannot read", path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    fs::read(path).map_err(io_err("cannot read", path))
}

/// Reads the private file at `path`, or creates it (0600) with the contents `make` returns.
/// Of two processes racing to create it, both end up with the winner's contents.
pub fn load_or_create(path: &Path, make: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, KeyFileError> {
    match fs::metadata(path) {
        Ok(_) => return read_private(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot read", path)(e)),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err("cannot create the directory of", path))?;
    }
    let contents = make();
    // Written whole under a temporary name, then linked into place: a crash never leaves a
    // half-written key.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    if let Err(e) = write_new_private(&tmp, &contents) {
        return Err(io_err("cannot write", &tmp)(e));
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err("cannot sync the directory of", path))?;
            }
            Ok(contents)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_private(path),
        Err(e) => Err(io_err("cannot create", path)(e)),
    }
}

/// Writes `contents` to a new file `tmp` readable by its owner only, synced to disk, for the
/// caller to move into place; on failure nothing is left behind.
pub fn write_new_private(tmp: &Path, contents: &[u8]) -> io::Result<()> {
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)?;
        f.write_all(contents)?;
        f.sync_all()
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_then_read_back_and_refused_when_exposed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        let first = load_or_create(&path, || b"one".to_vec()).unwrap();
        let again = load_or_create(&path, || b"two".to_vec()).unwrap();
        assert_eq!((first.as_slice(), again.as_slice()), (&b"one"[..], &b"one"[..]));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_private(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && !err.contains("one"), "{err}");
    }
}
