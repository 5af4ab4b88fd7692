//! Facts about the machine and the invocation: are we root, are we in CI.
//!
//! Read-only; this module must never change anything on the host.
use std::{env, fs};

/// True when the effective user id is 0, read from /proc/self/status so xtask needs no unsafe FFI.
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            // Real, effective, saved, filesystem: the second one decides permissions.
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// True under CI (`CI` set to anything but empty, `0` or `false`), where skipping a check is an error.
pub fn is_ci() -> bool {
    env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
}
