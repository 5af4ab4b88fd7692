//! The systemd guest's disk: a Debian root filesystem built from Debian's packages by
//! mmdebstrap, as an ext4 image made by `mke2fs -d` (no loop mount), cached under
//! `<target>/vm-tests/rootfs/` and keyed by a hash of everything that goes into it. Each run
//! boots a copy of the cached image with that run's binaries written in by `debugfs`, so a
//! rebuilt ghgate never invalidates the cache and the guest's writes (the install, the reboot)
//! never reach it.
//!
//! This module must never mount anything or touch the host's own root: mmdebstrap builds in a
//! directory of its own, and the image is written as a file.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::process;

/// The Debian release the guest runs (the host's own, whose apt sources reach the registry).
const SUITE: &str = "bookworm";
/// `essential`: only Essential: yes packages and what `--include` pulls in (no apt, no
/// priority: important set), the smallest variant that still boots systemd.
const VARIANT: &str = "essential";
/// What the guest needs beyond the essential set: systemd as init, the clients a job step runs
/// (git, curl, node; python3, which `ghgate doctor` checks too), the trust store `ghgate
/// install` adds its CA to, and `ip` for debugging.
const PACKAGES: &str = "systemd,systemd-sysv,ca-certificates,curl,git,nodejs,python3,iproute2";
/// Documentation, manual pages and translations are not needed in a throwaway guest.
const DPKG_OPTIONS: [&str; 4] = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/doc/*/copyright",
];
/// The image's size: the root filesystem is about 260 MiB, the rest is room for the run.
const IMAGE_SIZE: &str = "1G";
/// Where this run's binaries go in the guest.
pub const PAYLOAD_DIR: &str = "/opt/ghgate-vm";

/// What mmdebstrap's customize hook does to the root filesystem (`$1`): a hostname, a fixed
/// machine id (so the second boot is not a first boot), no getty on the serial console (the
/// test owns it), the test GitHub's names on loopback, and the unit that runs the guest test
/// at every boot. The test itself (`vm-systemd`) decides what each boot does.
const CUSTOMIZE: &str = r#"set -eu
root="$1"
echo ghgate-vm > "$root/etc/hostname"
echo 0c0ffee0c0ffee0c0ffee0c0ffee0c0f > "$root/etc/machine-id"
cat > "$root/etc/hosts" <<'EOF'
127.0.0.1 localhost ghgate-vm
::1 localhost
# The test GitHub (vm-systemd's fake-github service) listens here.
127.0.1.10 github.com api.github.com codeload.github.com
EOF
for unit in serial-getty@ttyS0.service getty@tty1.service systemd-networkd-wait-online.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
mkdir -p "$root/opt/ghgate-vm" "$root/etc/systemd/system/multi-user.target.wants"
cat > "$root/etc/systemd/system/ghgate-vm.service" <<'EOF'
[Unit]
Description=ghgate systemd guest test (cargo xtask vm-test)
After=multi-user.target

[Service]
Type=exec
ExecStart=/opt/ghgate-vm/vm-systemd
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0

[Install]
WantedBy=multi-user.target
EOF
ln -sf ../ghgate-vm.service "$root/etc/systemd/system/multi-user.target.wants/ghgate-vm.service"
"#;

/// A cached image.
pub struct Base {
    pub image: PathBuf,
    /// How long building it took, or `None` if it was cached.
    pub built_in: Option<Duration>,
}

/// The cached base image under `vm_dir` (`<target>/vm-tests`), built first if missing.
pub fn base(vm_dir: &Path) -> Result<Base> {
    let dir = vm_dir.join("rootfs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = format!("{:016x}", fnv1a(&recipe()));
    let image = dir.join(format!("{SUITE}-{key}.img"));
    if image.is_file() {
        println!("ok: systemd guest root filesystem cached ({})", image.display());
        return Ok(Base {
            image,
            built_in: None,
        });
    }
    let start = Instant::now();
    // Older builds (another package list) are of no use now.
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".img") || name.starts_with("build-") || name.ends_with(".partial") {
            if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            }
            .with_context(|| format!("removing {}", path.display()))?;
        }
    }
    let tree = dir.join(format!("build-{key}"));
    let hook = dir.join(format!("customize-{key}.sh"));
    fs::write(&hook, CUSTOMIZE).with_context(|| format!("writing {}", hook.display()))?;
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(format!("--variant={VARIANT}"))
        .arg(format!("--include={PACKAGES}"));
    for option in DPKG_OPTIONS {
        cmd.arg(format!("--dpkgopt={option}"));
    }
    cmd.arg(format!("--customize-hook=sh {} \"$1\"", hook.display()))
        .args([SUITE])
        .arg(&tree);
    let built = process::run(
        "mmdebstrap (the systemd guest's root filesystem; `cargo xtask setup` installs it)",
        &mut cmd,
    );
    let _ = fs::remove_file(&hook);
    built?;
    let partial = image.with_extension("img.partial");
    let made = process::run(
        "mke2fs -d (the systemd guest's disk image)",
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "ghgate-root", "-d"])
            .arg(&tree)
            .arg(&partial)
            .arg(IMAGE_SIZE),
    );
    fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    made?;
    fs::rename(&partial, &image)
        .with_context(|| format!("renaming {} to {}", partial.display(), image.display()))?;
    Ok(Base {
        image,
        built_in: Some(start.elapsed()),
    })
}

/// Everything the cached image depends on: a change to any of it builds a new one.
fn recipe() -> String {
    format!("{SUITE}\n{VARIANT}\n{PACKAGES}\n{DPKG_OPTIONS:?}\n{IMAGE_SIZE}\n{CUSTOMIZE}")
}

/// FNV-1a, 64 bits: stable across Rust releases (std's hasher is not), enough for a cache key.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A copy of `base` at `run`, with each `(host file, name)` written into [`PAYLOAD_DIR`] as an
/// executable owned by root.
pub fn for_run(base: &Path, run: &Path, files: &[(&Path, &str)]) -> Result<()> {
    process::run(
        "copying the systemd guest's disk",
        Command::new("cp").arg("--sparse=always").arg(base).arg(run),
    )?;
    let mut script = String::new();
    for (src, name) in files {
        let dest = format!("{PAYLOAD_DIR}/{name}");
        script += &format!(
            "write {} {dest}\nsif {dest} mode 0100755\nsif {dest} uid 0\nsif {dest} gid 0\n",
            src.display()
        );
    }
    let commands = run.with_extension("debugfs");
    fs::write(&commands, script).with_context(|| format!("writing {}", commands.display()))?;
    let wrote = process::run(
        "debugfs (this run's binaries into the systemd guest's disk)",
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&commands)
            .arg(run),
    );
    let _ = fs::remove_file(&commands);
    wrote?;
    // debugfs reports a failed command and goes on, so each file is checked by its size.
    for (src, name) in files {
        let want = fs::metadata(src)
            .with_context(|| format!("reading {}", src.display()))?
            .len();
        let mut cmd = Command::new("debugfs");
        cmd.arg("-R").arg(format!("stat {PAYLOAD_DIR}/{name}")).arg(run);
        let out = process::probe_stdout(&mut cmd).unwrap_or_default();
        if !out.contains(&format!("Size: {want}")) {
            bail!(
                "debugfs did not write {name} ({want} bytes) into {}: {}",
                run.display(),
                out.lines().next().unwrap_or("no output")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_follows_the_recipe() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(&recipe()), fnv1a(&recipe().replace("nodejs", "")));
        assert!(CUSTOMIZE.contains(PAYLOAD_DIR));
    }
}
