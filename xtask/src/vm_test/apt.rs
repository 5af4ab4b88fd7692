//! Finding and downloading Debian kernel packages with apt, from the system's sources or from a
//! private apt configuration for a release the host does not use (bullseye for 5.10).
//!
//! A private configuration keeps its own sources, lists and cache under the target directory and
//! reads no dpkg status. This module must never change the system's apt sources or install a
//! package: it only downloads `.deb` files.
use std::{
    cmp::Ordering,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{host, process};

/// Where packages come from.
pub struct Apt {
    /// The private state directory, or `None` for the system's configuration.
    private: Option<PathBuf>,
}

impl Apt {
    /// The host's own apt sources and lists.
    pub fn system() -> Self {
        Self { private: None }
    }

    /// A private configuration in `dir` with `sources` as its only sources.list lines.
    pub fn private(dir: &Path, sources: &[&str]) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial", "etc"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let list = dir.join("etc/sources.list");
        let text: String = sources.iter().map(|line| format!("{line}\n")).collect();
        if fs::read_to_string(&list).ok().as_deref() != Some(text.as_str()) {
            fs::write(&list, text).with_context(|| format!("writing {}", list.display()))?;
        }
        Ok(Self {
            private: Some(dir.to_path_buf()),
        })
    }

    /// `program` (apt-get or apt-cache) with the private configuration's options, if any.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        if let Some(dir) = &self.private {
            let options = [
                format!("Dir::Etc::SourceList={}", dir.join("etc/sources.list").display()),
                "Dir::Etc::SourceParts=/dev/null".to_owned(),
                format!("Dir::State::Lists={}", dir.join("lists").display()),
                format!("Dir::Cache={}", dir.join("cache").display()),
                "Dir::State::Status=/dev/null".to_owned(),
                "APT::Get::List-Cleanup=0".to_owned(),
            ];
            for option in options {
                cmd.arg("-o").arg(option);
            }
        }
        cmd
    }

    /// Package names matching the regular expression `pattern`, highest version first.
    ///
    /// The version compared is the part of the name after `prefix` and before `suffix`
    /// (`6.1.0-56` in `linux-image-6.1.0-56-cloud-amd64-unsigned`), which is what moves when
    /// Debian publishes a new kernel ABI.
    pub fn search(&self, pattern: &str, prefix: &str, suffix: &str) -> Result<Vec<String>> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["search", "--names-only", pattern]);
        let text = capture("apt-cache search", &mut cmd)?;
        let mut found: Vec<(String, String)> = text
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter_map(|name| {
                let version = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
                Some((name.to_owned(), version.to_owned()))
            })
            .collect();
        found.sort_by(|(_, a), (_, b)| compare_versions(b, a));
        found.dedup();
        Ok(found.into_iter().map(|(name, _)| name).collect())
    }

    /// `apt-get update`. For the system's sources this needs root, so without it the error says
    /// what to run.
    pub fn update(&self) -> Result<()> {
        if self.private.is_none() && !host::is_root() {
            bail!(
                "the apt lists need refreshing, which needs root: run `sudo apt-get update`, \
                 then run this again"
            );
        }
        let mut cmd = self.command("apt-get");
        cmd.arg("update");
        process::run("apt-get update", &mut cmd)
    }

    /// Downloads `package` into `dir` and returns the path of the `.deb`.
    pub fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        let stale = debs(dir, package)?;
        for old in stale {
            fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        let mut cmd = self.command("apt-get");
        cmd.args(["download", package]).current_dir(dir);
        process::run(&format!("downloading {package}"), &mut cmd)?;
        match debs(dir, package)?.as_slice() {
            [deb] => Ok(deb.clone()),
            found => bail!(
                "after `apt-get download {package}` expected one {package}_*.deb in {}, found {}",
                dir.display(),
                found.len()
            ),
        }
    }
}

/// The `.deb` files of `package` in `dir` (apt names them `<package>_<version>_<arch>.deb`).
fn debs(dir: &Path, package: &str) -> Result<Vec<PathBuf>> {
    let prefix = format!("{package}_");
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            found.push(path);
        }
    }
    Ok(found)
}

/// Prints and runs `cmd`, returning its stdout; a failure is an error naming `step`.
pub fn capture(step: &str, cmd: &mut Command) -> Result<String> {
    println!("$ {}", process::display(cmd));
    let output = cmd
        .output()
        .with_context(|| format!("{step}: could not start `{}`", process::display(cmd)))?;
    if !output.status.success() {
        bail!(
            "{step} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Debian's version ordering (deb-version(7), as `dpkg --compare-versions`): epoch numerically,
/// then upstream version, then revision.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (a_epoch, a_upstream, a_revision) = split_version(a);
    let (b_epoch, b_upstream, b_revision) = split_version(b);
    a_epoch
        .cmp(&b_epoch)
        .then_with(|| compare_part(a_upstream, b_upstream))
        .then_with(|| compare_part(a_revision, b_revision))
}

/// `[epoch:]upstream[-revision]`; the revision starts after the last hyphen.
fn split_version(version: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match version.split_once(':') {
        Some((epoch, rest)) if epoch.bytes().all(|b| b.is_ascii_digit()) => {
            (epoch.parse().unwrap_or(0), rest)
        }
        _ => (0, version),
    };
    let (upstream, revision) = rest.rsplit_once('-').unwrap_or((rest, ""));
    (epoch, upstream, revision)
}

/// dpkg's `verrevcmp`: alternating runs of non-digits (compared by [`weight`]) and digits
/// (compared as numbers).
fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let order = weight(a.get(i).copied()).cmp(&weight(b.get(j).copied()));
            if order.is_ne() {
                return order;
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_difference = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_difference.is_eq() {
                first_difference = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_difference.is_ne() {
            return first_difference;
        }
    }
    Ordering::Equal
}

/// `~` sorts before everything, even the end of the string; letters before other characters.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CASES: [(&str, &str, Ordering); 13] = [
        ("6.1.0-56", "6.1.0-47", Ordering::Greater),
        ("6.1.0-9", "6.1.0-10", Ordering::Less),
        ("6.12.117+deb12", "6.12.99+deb12", Ordering::Greater),
        ("6.12.9+deb12", "6.12.10+deb12", Ordering::Less),
        ("5.10.0-35", "5.10.0-35", Ordering::Equal),
        ("1.0~rc1", "1.0", Ordering::Less),
        ("1.0", "1.0+b1", Ordering::Less),
        ("1.0a", "1.0+", Ordering::Less),
        ("1:1.0", "2.0", Ordering::Greater),
        ("1.01", "1.1", Ordering::Equal),
        ("6.1.158-1", "6.1.158-1~deb11u1", Ordering::Greater),
        ("1.0-1", "1.0", Ordering::Greater),
        ("7.2+dfsg-7+deb12u18", "7.2+dfsg-7+deb12u15", Ordering::Greater),
    ];

    #[test]
    fn orders_versions_like_dpkg() {
        for (a, b, expected) in CASES {
            assert_eq!(compare_versions(a, b), expected, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), expected.reverse(), "{b} vs {a}");
        }
    }

    /// Where dpkg is installed, it is the reference.
    #[test]
    fn agrees_with_dpkg_when_installed() {
        for (a, b, expected) in CASES {
            let op = match expected {
                Ordering::Less => "lt",
                Ordering::Equal => "eq",
                Ordering::Greater => "gt",
            };
            let Ok(status) = Command::new("dpkg")
                .args(["--compare-versions", a, op, b])
                .status()
            else {
                println!("dpkg is not installed; skipped");
                return;
            };
            assert!(status.success(), "dpkg disagrees: {a} {op} {b}");
        }
    }

    #[test]
    fn private_configuration_passes_every_directory_option() {
        let dir = std::env::temp_dir().join(format!("xtask-apt-{}", std::process::id()));
        let apt = Apt::private(&dir, &["deb http://deb.debian.org/debian bullseye main"]).unwrap();
        let cmd = apt.command("apt-get");
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let list = fs::read_to_string(dir.join("etc/sources.list")).unwrap();
        let partial_dirs = dir.join("lists/partial").is_dir() && dir.join("cache/archives/partial").is_dir();
        fs::remove_dir_all(&dir).unwrap();

        assert_eq!(list, "deb http://deb.debian.org/debian bullseye main\n");
        assert!(partial_dirs);
        let options: Vec<&str> = args.iter().skip(1).step_by(2).map(String::as_str).collect();
        assert!(args.iter().step_by(2).all(|a| a == "-o"), "{args:?}");
        assert_eq!(
            options,
            [
                format!("Dir::Etc::SourceList={}/etc/sources.list", dir.display()).as_str(),
                "Dir::Etc::SourceParts=/dev/null",
                &format!("Dir::State::Lists={}/lists", dir.display()),
                &format!("Dir::Cache={}/cache", dir.display()),
                "Dir::State::Status=/dev/null",
                "APT::Get::List-Cleanup=0",
            ]
        );
        assert!(Apt::system().command("apt-get").get_args().next().is_none());
    }
}
