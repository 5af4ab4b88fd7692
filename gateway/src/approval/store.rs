//! The approvals file: every approval as one JSON document, replaced whole on each change
//! (temporary file, fsync, rename, fsync of the directory), mode 0600.
//!
//! Must never leave a half-written file in place, nor start from an unreadable one as if it
//! were empty (that would forget approvals already used).
use std::{fs, io, path::Path};

use serde::{Deserialize, Serialize};

use super::{Approval, ApprovalError};

const VERSION: u32 = 1;

#[derive(Serialize)]
struct FileRef<'a> {
    version: u32,
    approvals: &'a [Approval],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    approvals: Vec<Approval>,
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> ApprovalError + 'p {
    move |source| ApprovalError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The approvals in `path`; none when it does not exist yet.
pub(super) fn load(path: &Path) -> Result<Vec<Approval>, ApprovalError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("cannot read", path)(e)),
    };
    let file: File = serde_json::from_slice(&text).map_err(|e| ApprovalError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if file.version != VERSION {
        return Err(ApprovalError::Corrupt {
            path: path.to_owned(),
            reason: format!("version {} is not {VERSION}", file.version),
        });
    }
    Ok(file.approvals)
}

/// Replaces `path` with `approvals`, durably.
pub(super) fn save(path: &Path, approvals: &[Approval]) -> Result<(), ApprovalError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
    let body = serde_json::to_vec_pretty(&FileRef {
        version: VERSION,
        approvals,
    })
    .expect("approvals serialize");
    let tmp = path.with_extension("json.tmp");
    // A temporary file left by a crash is simply replaced.
    let _ = fs::remove_file(&tmp);
    if let Err(e) = crate::keyfile::write_new_private(&tmp, &body) {
        return Err(io_err("cannot write", &tmp)(e));
    }
    fs::rename(&tmp, path).map_err(io_err("cannot replace", path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot sync the directory of", path))
}
