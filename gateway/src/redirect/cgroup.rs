//! Finding the cgroup2 hierarchy and the cgroup the programs attach to.
//!
//! The cgroup2 mount is read from /proc/self/mountinfo, never assumed (hybrid hosts mount it at
//! /sys/fs/cgroup/unified). This module never attaches anything; it only names and creates
//! directories and moves the calling process.
use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};

use crate::config::CgroupTarget;

/// The mount point of the cgroup2 hierarchy, from a mountinfo text.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // fields: id parent major:minor root mount-point options [optional...] - fstype source ...
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount point of this machine.
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    cgroup2_mount_in(&text).ok_or_else(|| {
        anyhow!(
            "no cgroup2 filesystem is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup) and retry"
        )
    })
}

/// The directory of the target cgroup (not created).
pub fn target_dir(target: &CgroupTarget) -> anyhow::Result<PathBuf> {
    let mount = cgroup2_mount()?;
    Ok(match target {
        CgroupTarget::Host => mount,
        CgroupTarget::Path(rel) => mount.join(rel),
    })
}

/// The target cgroup's directory, created if missing.
pub fn ensure(target: &CgroupTarget) -> anyhow::Result<PathBuf> {
    let dir = target_dir(target)?;
    if !dir.is_dir() {
        fs::create_dir_all(&dir).with_context(|| {
            format!(
                "cannot create cgroup {} (is the cgroup2 mount writable, are you root?)",
                dir.display()
            )
        })?;
    }
    if !dir.join("cgroup.procs").exists() {
        bail!("{} is not a cgroup2 directory (no cgroup.procs)", dir.display());
    }
    Ok(dir)
}

/// Moves the calling process into the cgroup at `dir`.
pub fn enter(dir: &Path) -> anyhow::Result<()> {
    let procs = dir.join("cgroup.procs");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| format!("cannot open {} (are you root?)", procs.display()))?;
    // "0" means the writing process itself.
    f.write_all(b"0")
        .with_context(|| format!("cannot move this process into {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let text = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            cgroup2_mount_in(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn optional_fields_and_escapes() {
        let text = "31 30 0:27 / /mnt/with\\040space rw shared:10 master:3 - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount_in(text), Some(PathBuf::from("/mnt/with space")));
        assert_eq!(cgroup2_mount_in("1 2 0:1 / /sys rw - sysfs sysfs rw\n"), None);
    }
}
