//! rustup toolchains, their components and their extra targets.
//!
//! Installs exactly the pinned names; it must never change the default toolchain or install
//! `stable`/`nightly` channels, which would move under our feet.
use std::process::Command;

use anyhow::Result;

use crate::process;

/// A pinned toolchain, the components it needs and the targets it builds for besides the host.
pub struct Toolchain<'a> {
    pub name: &'a str,
    pub components: &'a [&'a str],
    pub targets: &'a [&'a str],
}

/// Whether `entry` (a line of rustup's listings) names `name`, bare or followed by a host triple.
///
/// A triple starts with a letter (`x86_64-…`, `aarch64-…`), which keeps the pin `nightly` from
/// matching `nightly-2026-05-20-…`.
fn names(entry: &str, name: &str) -> bool {
    let Some(entry) = entry.split_whitespace().next() else {
        return false;
    };
    entry == name
        || entry
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|triple| triple.starts_with(|c: char| c.is_ascii_alphabetic()))
}

fn toolchain_installed(name: &str) -> bool {
    process::probe_stdout(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|out| out.lines().any(|l| names(l, name)))
}

/// Items of `wanted` that `rustup <kind> list --installed` does not show for the toolchain.
fn not_installed<'a>(
    kind: &str,
    toolchain: &str,
    wanted: &[&'a str],
    is: fn(&str, &str) -> bool,
) -> Vec<&'a str> {
    let installed = process::probe_stdout(Command::new("rustup").args([
        kind,
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .unwrap_or_default();
    wanted
        .iter()
        .copied()
        .filter(|w| !installed.lines().any(|l| is(l, w)))
        .collect()
}

fn missing_components<'a>(toolchain: &Toolchain<'a>) -> Vec<&'a str> {
    not_installed("component", toolchain.name, toolchain.components, names)
}

fn missing_targets<'a>(toolchain: &Toolchain<'a>) -> Vec<&'a str> {
    not_installed("target", toolchain.name, toolchain.targets, |line, target| {
        line.trim() == target
    })
}

pub fn missing(toolchain: &Toolchain) -> Vec<String> {
    if !toolchain_installed(toolchain.name) {
        return vec![format!("toolchain {}", toolchain.name)];
    }
    let components = missing_components(toolchain)
        .into_iter()
        .map(|c| format!("component {c} of {}", toolchain.name));
    let targets = missing_targets(toolchain)
        .into_iter()
        .map(|t| format!("target {t} of {}", toolchain.name));
    components.chain(targets).collect()
}

pub fn ensure(toolchain: &Toolchain) -> Result<()> {
    let name = toolchain.name;
    let wanted = toolchain.components.join(", ");
    if !toolchain_installed(name) {
        let targets = if toolchain.targets.is_empty() {
            String::new()
        } else {
            format!(", targets {}", toolchain.targets.join(", "))
        };
        println!("installing: toolchain {name} (minimal profile + {wanted}{targets})");
        let mut cmd = Command::new("rustup");
        cmd.args(["toolchain", "install", name, "--profile", "minimal"]);
        for component in toolchain.components {
            cmd.args(["--component", component]);
        }
        for target in toolchain.targets {
            cmd.args(["--target", target]);
        }
        return process::run(&format!("installing toolchain {name}"), &mut cmd);
    }
    println!("ok: toolchain {name} present");
    let missing = missing_components(toolchain);
    if missing.is_empty() {
        println!("ok: {name} has {wanted}");
    } else {
        println!("installing: {} for {name}", missing.join(", "));
        process::run(
            &format!("adding components to {name}"),
            Command::new("rustup")
                .args(["component", "add", "--toolchain", name])
                .args(&missing),
        )?;
    }
    let missing = missing_targets(toolchain);
    for target in toolchain.targets {
        if !missing.contains(target) {
            println!("ok: {name} has target {target}");
            continue;
        }
        println!("installing: target {target} for {name}");
        process::run(
            &format!("adding target {target} to {name}"),
            Command::new("rustup").args(["target", "add", "--toolchain", name, target]),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn matches_bare_and_host_qualified_names_only() {
        assert!(names("1.95.0-x86_64-unknown-linux-gnu", "1.95.0"));
        assert!(names(
            "stable-x86_64-unknown-linux-gnu (active, default)",
            "stable"
        ));
        assert!(names("rust-src", "rust-src"));
        assert!(names("clippy-aarch64-unknown-linux-gnu", "clippy"));
        assert!(!names("nightly-2026-05-20-x86_64-unknown-linux-gnu", "nightly"));
        assert!(!names("1.95.0-x86_64-unknown-linux-gnu", "1.95"));
        assert!(!names("rust-std-x86_64-unknown-linux-gnu", "rust-src"));
    }
}
