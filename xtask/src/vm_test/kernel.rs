//! The guest kernels: Debian's cloud kernel packages, downloaded once and extracted under
//! `<target>/vm-tests/kernels/<series>/`.
//!
//! The package is found by pattern, never by a hard-coded ABI number, so a refreshed apt list
//! picks up Debian's newest build. This module must never install a kernel on the host: packages
//! are only downloaded and unpacked with `dpkg-deb -x`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::apt::{self, Apt};
use crate::process;

/// A kernel series the guests can boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    V5_10,
    V6_1,
    V6_12,
}

/// Where a series' packages come from.
enum Source {
    System,
    Bullseye,
}

const PREFIX: &str = "linux-image-";
const SUFFIX: &str = "-cloud-amd64-unsigned";
/// bullseye carries 5.10; apt reads these through a private configuration (see [`Apt::private`]).
const BULLSEYE: [&str; 2] = [
    "deb http://deb.debian.org/debian bullseye main",
    "deb http://deb.debian.org/debian-security bullseye-security main",
];

impl Series {
    pub const ALL: [Series; 3] = [Series::V5_10, Series::V6_1, Series::V6_12];
    /// The kernels CI boots.
    pub const CI: [Series; 2] = [Series::V6_1, Series::V6_12];

    pub fn name(self) -> &'static str {
        match self {
            Series::V5_10 => "5.10",
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    /// The `apt-cache search --names-only` pattern for the package.
    fn pattern(self) -> &'static str {
        match self {
            Series::V5_10 => r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned$",
            Series::V6_1 => r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
            Series::V6_12 => r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$",
        }
    }

    fn source(self) -> Source {
        match self {
            Series::V5_10 => Source::Bullseye,
            Series::V6_1 | Series::V6_12 => Source::System,
        }
    }
}

/// An extracted kernel package.
pub struct Kernel {
    pub series: Series,
    /// The Debian package name, e.g. `linux-image-6.1.0-56-cloud-amd64-unsigned`.
    pub package: String,
    /// The Debian package version, e.g. `6.1.158-1`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// The kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    release: String,
    /// The whole unpacked package, kept so modules can be added to guests later.
    root: PathBuf,
}

/// The cached kernel of `series` under `vm_dir` (`<target>/vm-tests`), downloading and
/// extracting it first if its vmlinuz is not there yet.
pub fn fetch(vm_dir: &Path, series: Series) -> Result<Kernel> {
    let dir = vm_dir.join("kernels").join(series.name());
    if let Some(kernel) = cached(&dir, series)? {
        println!(
            "ok: kernel {} cached ({} {})",
            series.name(),
            kernel.package,
            kernel.version
        );
        return Ok(kernel);
    }
    println!("fetching: kernel {}", series.name());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let apt = match series.source() {
        Source::System => Apt::system(),
        Source::Bullseye => Apt::private(&vm_dir.join("apt-bullseye"), &BULLSEYE)?,
    };
    let deb = download(&apt, series, &dir)?;
    extract(&dir, &deb)?;
    fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    cached(&dir, series)?.with_context(|| {
        format!(
            "{} has no boot/vmlinuz-* after extracting the package",
            dir.join("root").display()
        )
    })
}

/// The newest matching package that can be downloaded, downloaded into `dir`. The apt lists are
/// refreshed only when they have no candidate, or when none of the candidates they name can be
/// downloaded any more (a mirror may list a build it no longer, or does not yet, serve).
fn download(apt: &Apt, series: Series, dir: &Path) -> Result<PathBuf> {
    let pattern = series.pattern();
    let mut updated = false;
    loop {
        let candidates = apt.search(pattern, PREFIX, SUFFIX)?;
        if candidates.is_empty() {
            if updated {
                bail!(
                    "no package matches {pattern} even after `apt-get update`; \
                     does Debian still publish the {} cloud kernel?",
                    series.name()
                );
            }
            println!("note: no package matches {pattern}; refreshing the apt lists");
            apt.update()?;
            updated = true;
            continue;
        }
        let mut failures = Vec::new();
        for (i, package) in candidates.iter().enumerate() {
            println!(
                "kernel {}: {package} ({} of {} candidates, newest first)",
                series.name(),
                i + 1,
                candidates.len()
            );
            match apt.download(package, dir) {
                Ok(deb) => return Ok(deb),
                Err(err) => {
                    println!("note: {err:#}; trying the next candidate");
                    failures.push(format!("{package}: {err:#}"));
                }
            }
        }
        if updated {
            bail!(
                "no package matching {pattern} could be downloaded:\n  {}",
                failures.join("\n  ")
            );
        }
        println!("note: no candidate could be downloaded; refreshing the apt lists");
        apt.update()?;
        updated = true;
    }
}

/// Unpacks `deb` into `dir/root`, recording its name and version in `dir/package`. The tree
/// appears under its final name only when complete, so an interrupted run fetches again.
fn extract(dir: &Path, deb: &Path) -> Result<()> {
    let field = |name: &str| -> Result<String> {
        let mut cmd = Command::new("dpkg-deb");
        cmd.arg("-f").arg(deb).arg(name);
        Ok(apt::capture("reading the package fields", &mut cmd)?
            .trim()
            .to_owned())
    };
    let package = format!("{} {}\n", field("Package")?, field("Version")?);
    let partial = dir.join("root.partial");
    let root = dir.join("root");
    for stale in [&partial, &root] {
        if stale.exists() {
            fs::remove_dir_all(stale).with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    process::run(
        "extracting the kernel package",
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial),
    )?;
    let record = dir.join("package");
    fs::write(&record, package).with_context(|| format!("writing {}", record.display()))?;
    fs::rename(&partial, &root)
        .with_context(|| format!("renaming {} to {}", partial.display(), root.display()))
}

/// The kernel in `dir` if it was extracted completely.
fn cached(dir: &Path, series: Series) -> Result<Option<Kernel>> {
    let root = dir.join("root");
    let boot = root.join("boot");
    let Ok(entries) = fs::read_dir(&boot) else {
        return Ok(None);
    };
    let mut vmlinuz = None;
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", boot.display()))?
            .path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            vmlinuz = Some((release.to_owned(), path.clone()));
        }
    }
    let Some((release, vmlinuz)) = vmlinuz else {
        return Ok(None);
    };
    let record = dir.join("package");
    let text = fs::read_to_string(&record).with_context(|| format!("reading {}", record.display()))?;
    let (package, version) = text
        .trim()
        .split_once(' ')
        .with_context(|| format!("{} should hold `<package> <version>`", record.display()))?;
    Ok(Some(Kernel {
        series,
        package: package.to_owned(),
        version: version.to_owned(),
        vmlinuz,
        release,
        root,
    }))
}

impl Kernel {
    /// The `.ko` files (possibly compressed) of the modules `names`, from this kernel's own
    /// `lib/modules/<release>/`, for guests that need a feature the cloud kernel builds as a
    /// module. `-` and `_` are interchangeable in names, as for modprobe.
    ///
    /// No guest test loads a module yet. When one does, the files go into a per-kernel cpio
    /// appended to the shared initramfs (the kernel unpacks concatenated archives) and vm-init
    /// loads them with finit_module in dependency order (see `modules.dep` in the same tree).
    #[cfg_attr(not(test), expect(dead_code, reason = "no guest test needs a module yet"))]
    pub fn modules(&self, names: &[&str]) -> Result<Vec<PathBuf>> {
        let dir = self.root.join("lib/modules").join(&self.release);
        let mut all = Vec::new();
        collect_modules(&dir, &mut all).with_context(|| format!("listing {}", dir.display()))?;
        let normal = |s: &str| s.replace('-', "_");
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for name in names {
            match all.iter().find(|(module, _)| normal(module) == normal(name)) {
                Some((_, path)) => found.push(path.clone()),
                None => missing.push(*name),
            }
        }
        if !missing.is_empty() {
            bail!(
                "kernel {} ({}) has no module {} under {}; it may be built in (see its config-* in boot/)",
                self.series.name(),
                self.release,
                missing.join(", "),
                dir.display()
            );
        }
        Ok(found)
    }
}

/// Every `<name>.ko[.xz|.zst|.gz]` under `dir`, as (name, path).
fn collect_modules(dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_modules(&path, out)?;
            continue;
        }
        let file = entry.file_name().to_string_lossy().into_owned();
        let name = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
            .iter()
            .find_map(|ext| file.strip_suffix(ext));
        if let Some(name) = name {
            out.push((name.to_owned(), path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake extracted package: what `dpkg-deb -x` leaves, plus the `package` record.
    fn fake(dir: &Path) {
        let modules = dir.join("root/lib/modules/6.1.0-9-cloud-amd64/kernel");
        fs::create_dir_all(modules.join("net/sched")).unwrap();
        fs::create_dir_all(modules.join("drivers/net")).unwrap();
        fs::create_dir_all(dir.join("root/boot")).unwrap();
        fs::write(dir.join("root/boot/vmlinuz-6.1.0-9-cloud-amd64"), "").unwrap();
        fs::write(dir.join("root/boot/config-6.1.0-9-cloud-amd64"), "").unwrap();
        fs::write(modules.join("net/sched/sch_netem.ko"), "").unwrap();
        fs::write(modules.join("drivers/net/veth.ko.xz"), "").unwrap();
        fs::write(
            dir.join("package"),
            "linux-image-6.1.0-9-cloud-amd64-unsigned 6.1.27-1\n",
        )
        .unwrap();
    }

    #[test]
    fn cached_kernel_and_its_modules_are_found() {
        let dir = std::env::temp_dir().join(format!("xtask-kernel-{}", std::process::id()));
        assert!(cached(&dir, Series::V6_1).unwrap().is_none());
        fake(&dir);
        let kernel = cached(&dir, Series::V6_1).unwrap().unwrap();
        let modules = kernel.modules(&["veth", "sch-netem"]);
        let missing = kernel.modules(&["veth", "nf_tables"]).map_err(|e| e.to_string());
        fs::remove_dir_all(&dir).unwrap();

        assert_eq!(kernel.package, "linux-image-6.1.0-9-cloud-amd64-unsigned");
        assert_eq!(kernel.version, "6.1.27-1");
        assert_eq!(kernel.release, "6.1.0-9-cloud-amd64");
        assert_eq!(kernel.vmlinuz, dir.join("root/boot/vmlinuz-6.1.0-9-cloud-amd64"));
        let release = dir.join("root/lib/modules/6.1.0-9-cloud-amd64/kernel");
        assert_eq!(
            modules.unwrap(),
            [
                release.join("drivers/net/veth.ko.xz"),
                release.join("net/sched/sch_netem.ko")
            ]
        );
        let missing = missing.unwrap_err();
        assert!(missing.contains("no module nf_tables"), "{missing}");
    }

    #[test]
    fn patterns_match_the_names_debian_uses() {
        let names = [
            (Series::V5_10, "5.10.0-35"),
            (Series::V6_1, "6.1.0-56"),
            (Series::V6_12, "6.12.117+deb12"),
        ];
        for (series, version) in names {
            // The pattern, with its regex escapes removed and the ABI number filled in, is the name.
            let literal = series
                .pattern()
                .trim_start_matches('^')
                .trim_end_matches('$')
                .replace('\\', "");
            let name = format!("{PREFIX}{version}{SUFFIX}");
            let (head, tail) = literal.split_once("[0-9]+").unwrap();
            assert!(
                name.starts_with(head) && name.ends_with(tail),
                "{name} vs {literal}"
            );
        }
    }
}
