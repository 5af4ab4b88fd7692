//! The kernel leak check run after the tests: no test cgroups, no test pins, no ghgate programs.
//!
//! Tests create cgroups named `ghgate-test-*` and pins named `ghgate-test*`, and must remove them
//! and detach every program even when they fail. This module only looks; it must never clean up,
//! since a leak has to be seen to be fixed. It never assumes where cgroup2 is mounted.
use std::{
    ffi::OsString,
    fs, io,
    os::unix::ffi::OsStringExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::host;

const CGROUP_PREFIX: &str = "ghgate-test-";
const PIN_PREFIX: &str = "ghgate-test";
const BPFFS: &str = "/sys/fs/bpf";
/// Names of ghgate's eBPF programs as the kernel reports them: the one list the loader uses.
const PROGRAMS: [&str; gateway_common::prog_names::ALL.len()] = gateway_common::prog_names::ALL;
/// Programs are freed asynchronously after the last link or fd goes away.
const PROGRAM_GRACE: Duration = Duration::from_secs(5);

/// Runs all three checks, printing what was checked; returns the leftovers and failures (empty
/// when clean).
pub fn check() -> Vec<String> {
    let mut problems = Vec::new();
    problems.extend(cgroups());
    problems.extend(pins());
    problems.extend(programs());
    problems
}

fn cgroups() -> Vec<String> {
    let mountinfo = match fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => text,
        Err(err) => return vec![format!("cannot read /proc/self/mountinfo: {err}")],
    };
    let mounts = cgroup2_mounts(&mountinfo);
    if mounts.is_empty() {
        println!("cgroups: no cgroup2 mount found, nothing to check");
        return Vec::new();
    }
    let mut problems = Vec::new();
    for mount in mounts {
        let mut found = Vec::new();
        match find(&mount, CGROUP_PREFIX, true, &mut found) {
            Ok(()) => println!(
                "cgroups: searched cgroup2 at {} for {CGROUP_PREFIX}*: {} found",
                mount.display(),
                found.len()
            ),
            Err(err) => problems.push(format!("cannot search {}: {err}", mount.display())),
        }
        problems.extend(found.iter().map(|p| format!("leftover cgroup {}", p.display())));
    }
    problems
}

fn pins() -> Vec<String> {
    let bpffs = Path::new(BPFFS);
    if !bpffs.is_dir() {
        println!("pins: {BPFFS} does not exist, nothing pinned");
        return Vec::new();
    }
    let mut found = Vec::new();
    if let Err(err) = find(bpffs, PIN_PREFIX, false, &mut found) {
        return vec![format!("cannot search {BPFFS}: {err}")];
    }
    println!("pins: searched {BPFFS} for {PIN_PREFIX}*: {} found", found.len());
    found
        .iter()
        .map(|p| format!("leftover pin {}", p.display()))
        .collect()
}

#[derive(Deserialize)]
struct Prog {
    id: u64,
    #[serde(default)]
    name: String,
}

fn programs() -> Vec<String> {
    let strict = host::is_ci();
    let deadline = Instant::now() + PROGRAM_GRACE;
    loop {
        let output = match Command::new("bpftool").args(["-j", "prog", "show"]).output() {
            Ok(output) => output,
            Err(err) if err.kind() == io::ErrorKind::NotFound && !strict => {
                println!("programs: bpftool not found, skipped (`cargo xtask setup` installs it)");
                return Vec::new();
            }
            Err(err) => {
                return vec![format!(
                    "cannot run bpftool to list kernel programs: {err} (`cargo xtask setup` installs it)"
                )];
            }
        };
        if !output.status.success() {
            if !host::is_root() && !strict {
                println!("programs: listing kernel programs needs root, skipped");
                return Vec::new();
            }
            return vec![format!(
                "`bpftool -j prog show` failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )];
        }
        let progs: Vec<Prog> = match serde_json::from_slice(&output.stdout) {
            Ok(progs) => progs,
            Err(err) => return vec![format!("cannot parse `bpftool -j prog show`: {err}")],
        };
        let ours: Vec<&Prog> = progs
            .iter()
            .filter(|p| PROGRAMS.contains(&p.name.as_str()))
            .collect();
        if ours.is_empty() || Instant::now() >= deadline {
            println!(
                "programs: {} loaded, {} of them ghgate's ({})",
                progs.len(),
                ours.len(),
                PROGRAMS.join(", ")
            );
            return ours
                .iter()
                .map(|p| format!("leftover program {} (id {})", p.name, p.id))
                .collect();
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Mount points of every cgroup2 filesystem in a /proc/self/mountinfo text.
fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            // Optional fields vary in number; " - " ends them, then the filesystem type.
            let (fields, rest) = line.split_once(" - ")?;
            (rest.split(' ').next()? == "cgroup2").then_some(())?;
            fields.split(' ').nth(4).map(unescape)
        })
        .collect();
    mounts.sort();
    mounts.dedup();
    mounts
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, b| n.wrapping_mul(8) + (b - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Collects entries under `dir` whose name starts with `prefix` (directories only if
/// `dirs_only`), without descending into matches. Entries vanishing mid-walk are not errors.
fn find(dir: &Path, prefix: &str, dirs_only: bool, found: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let is_dir = entry.file_type()?.is_dir();
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with(prefix) && (is_dir || !dirs_only) {
            found.push(path);
        } else if is_dir {
            match find(&path, prefix, dirs_only, found) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mounts_only() {
        let mountinfo = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:10 - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /mnt/my\\040cgroups rw,relatime shared:3 master:1 - cgroup2 none rw
";
        assert_eq!(
            cgroup2_mounts(mountinfo),
            [
                PathBuf::from("/mnt/my cgroups"),
                PathBuf::from("/sys/fs/cgroup/unified")
            ]
        );
    }

    #[test]
    fn finds_prefixed_entries_at_any_depth() {
        let dir = std::env::temp_dir().join(format!("xtask-leaks-{}", std::process::id()));
        fs::create_dir_all(dir.join("a/ghgate-test-1/inner")).unwrap();
        fs::create_dir_all(dir.join("b")).unwrap();
        fs::write(dir.join("b/ghgate-test-file"), "").unwrap();
        fs::create_dir_all(dir.join("ghgate-other")).unwrap();

        let mut dirs = Vec::new();
        find(&dir, CGROUP_PREFIX, true, &mut dirs).unwrap();
        let mut any = Vec::new();
        find(&dir, PIN_PREFIX, false, &mut any).unwrap();
        any.sort();
        fs::remove_dir_all(&dir).unwrap();

        assert_eq!(dirs, [dir.join("a/ghgate-test-1")]);
        assert_eq!(any, [dir.join("a/ghgate-test-1"), dir.join("b/ghgate-test-file")]);
    }
}
