//! `cargo xtask fuzz`: runs the cargo-fuzz targets of fuzz/ for a bounded time each.
//!
//! Each target starts from a copy of its seeds (fuzz/seeds/<target>) in a scratch corpus under the
//! workspace target directory, where libFuzzer may add and shrink inputs. The fuzz build, the
//! corpora and the crash artifacts all live under that target directory, so `.gitignore` covers
//! them and `cargo clean` removes them. This module must never write into fuzz/seeds: a seed is
//! added by hand, after a look at what it covers.
use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::{
    cargo::{self, Metadata},
    process, setup,
    workspace::Workspace,
};

/// libFuzzer's memory cap: the targets stay near 500 MB (ASan's quarantine included), so more
/// means a leak or a masker that buffers without bound.
const RSS_LIMIT_MB: u32 = 2048;
/// Largest input libFuzzer generates: several times the longest match a rule holds bytes back for
/// (a PEM block, `rules::PEM_MAX`), so held bytes cross many chunk boundaries.
const MAX_LEN: u32 = 65536;
/// Seconds one input may take before libFuzzer saves it as a hang (its default is 20 minutes,
/// which would let one slow input blow the step's time budget).
const TIMEOUT_SECONDS: u32 = 30;

/// Run the fuzz targets (fuzz/) with the pinned nightly, each for a fixed time, from a scratch
/// copy of its seeds. Fails, naming the target and the saved input, when a target crashes, hangs,
/// leaks or runs out of memory.
///
/// The corpus of a run is left in target/fuzz-corpus/<target>, crash inputs in
/// target/fuzz-artifacts/<target>/; reproduce one with
/// `cargo +<nightly> fuzz run --fuzz-dir fuzz --target-dir target/fuzz <target> <input>`.
#[derive(clap::Args)]
pub struct Args {
    /// The fuzz target to run (a `[[bin]]` of fuzz/Cargo.toml), or `all`.
    #[arg(long, value_name = "NAME", default_value = "all")]
    pub target: String,
    /// How long to fuzz each target, in seconds.
    #[arg(long, value_name = "N", default_value_t = 60)]
    pub seconds: u32,
}

pub fn run(ws: &Workspace, args: Args) -> Result<()> {
    setup::ensure_setup(ws)?;
    let targets = select(&targets(ws)?, &args.target)?;
    fuzz(ws, &targets, args.seconds)
}

/// Every target for `seconds` each: the bounded run of `cargo xtask test`.
pub fn check(ws: &Workspace, seconds: u32) -> Result<()> {
    fuzz(ws, &targets(ws)?, seconds)
}

/// Builds once, then runs each target even when an earlier one crashed: the targets test
/// different maskers, and one crash says nothing about the other.
fn fuzz(ws: &Workspace, targets: &[String], seconds: u32) -> Result<()> {
    let fuzz = Fuzz::new(ws)?;
    fuzz.build()?;
    let mut failures = Vec::new();
    for target in targets {
        if let Err(err) = fuzz.run(target, seconds) {
            println!("fuzz {target}: FAILED ({err:#})");
            failures.push(format!("{err:#}"));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// `wanted` (a target name or `all`) checked against the targets fuzz/Cargo.toml defines.
fn select(targets: &[String], wanted: &str) -> Result<Vec<String>> {
    if wanted == "all" {
        return Ok(targets.to_vec());
    }
    if targets.iter().any(|t| t == wanted) {
        return Ok(vec![wanted.to_owned()]);
    }
    bail!(
        "there is no fuzz target `{wanted}`: fuzz/Cargo.toml defines {} (or pass `all`)",
        targets.join(", ")
    )
}

#[derive(Deserialize)]
struct FuzzManifest {
    #[serde(default)]
    bin: Vec<Bin>,
}

#[derive(Deserialize)]
struct Bin {
    name: String,
}

/// The fuzz targets: the `[[bin]]`s of fuzz/Cargo.toml, the one list of them.
fn targets(ws: &Workspace) -> Result<Vec<String>> {
    let manifest = ws.root.join("fuzz/Cargo.toml");
    let text = fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let parsed: FuzzManifest =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    if parsed.bin.is_empty() {
        bail!("{} defines no `[[bin]]` fuzz target", manifest.display());
    }
    Ok(parsed.bin.into_iter().map(|b| b.name).collect())
}

/// Where a fuzz build and its runs keep their files.
struct Fuzz<'a> {
    ws: &'a Workspace,
    /// cargo-fuzz's `--target-dir`: its own, as its flags differ from every other build's.
    target_dir: PathBuf,
    /// Parent of the scratch corpora, one directory per target.
    corpora: PathBuf,
    /// Parent of the crash inputs, one directory per target.
    artifacts: PathBuf,
}

impl<'a> Fuzz<'a> {
    fn new(ws: &'a Workspace) -> Result<Self> {
        let target = Metadata::load(ws)?.target_dir;
        Ok(Self {
            ws,
            target_dir: target.join("fuzz"),
            corpora: target.join("fuzz-corpus"),
            artifacts: target.join("fuzz-artifacts"),
        })
    }

    /// `cargo +<nightly> fuzz <subcommand> --fuzz-dir fuzz --target-dir …`; the build options
    /// must be the same for build and run, or the run would rebuild.
    fn cargo_fuzz(&self, subcommand: &str) -> std::process::Command {
        let mut cmd = cargo::nightly_command(self.ws, ["fuzz", subcommand, "--fuzz-dir", "fuzz"]);
        cmd.arg("--target-dir").arg(&self.target_dir);
        cmd
    }

    /// Builds every target (one cargo build), so a build error is not mistaken for a crash.
    fn build(&self) -> Result<()> {
        process::run("building the fuzz targets", &mut self.cargo_fuzz("build"))
            .context("the fuzz targets do not build (fuzz/ follows the ghgate-mask API)")
    }

    /// Fuzzes `target` for `seconds` from a fresh copy of its seeds; an error names the target and
    /// any input libFuzzer saved (crash, leak, timeout or out-of-memory).
    fn run(&self, target: &str, seconds: u32) -> Result<()> {
        let corpus = self.corpora.join(target);
        let seeds = self.seed_corpus(target, &corpus)?;
        println!(
            "fuzz {target}: {seeds} seeds copied from fuzz/seeds/{target} to {}, {seconds} s",
            self.ws.display(&corpus)
        );
        let artifacts = self.artifacts.join(target);
        fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
        let started = SystemTime::now();

        let mut cmd = self.cargo_fuzz("run");
        cmd.arg(target).arg(&corpus).arg("--");
        cmd.arg(format!("-max_total_time={seconds}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg(format!("-max_len={MAX_LEN}"))
            .arg(format!("-timeout={TIMEOUT_SECONDS}"))
            // After cargo-fuzz's own -artifact_prefix (fuzz/artifacts/): libFuzzer keeps the last.
            .arg(format!("-artifact_prefix={}/", artifacts.display()));
        let result = process::run(&format!("fuzzing {target}"), &mut cmd);

        let saved = saved_since(&artifacts, started)?;
        if let Some(first) = saved.first() {
            let saved: Vec<String> = saved.iter().map(|p| self.ws.display(p)).collect();
            bail!(
                "fuzz target {target} failed on an input saved to {} (crash-, timeout-, oom- or \
                 leak- says how; reproduce: `cargo +{} fuzz run --fuzz-dir fuzz --target-dir {} \
                 {target} {}`)",
                saved.join(", "),
                self.ws.pins.ebpf_toolchain,
                self.ws.display(&self.target_dir),
                self.ws.display(first)
            );
        }
        result.with_context(|| format!("fuzz target {target} failed and saved no input"))?;
        let inputs = fs::read_dir(&corpus).map_or(0, |d| d.count());
        println!("fuzz {target}: passed ({inputs} inputs in the corpus)");
        Ok(())
    }

    /// Empties `corpus` and copies the target's seeds into it; returns how many it copied.
    fn seed_corpus(&self, target: &str, corpus: &Path) -> Result<usize> {
        let seeds = self.ws.root.join("fuzz/seeds").join(target);
        if corpus.exists() {
            fs::remove_dir_all(corpus).with_context(|| format!("emptying {}", corpus.display()))?;
        }
        fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let entries = fs::read_dir(&seeds)
            .with_context(|| format!("fuzz target {target} has no seeds in {}", seeds.display()))?;
        let mut copied = 0;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", seeds.display()))?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            fs::copy(entry.path(), corpus.join(entry.file_name()))
                .with_context(|| format!("copying {} into {}", entry.path().display(), corpus.display()))?;
            copied += 1;
        }
        if copied == 0 {
            bail!("{} holds no seed files", seeds.display());
        }
        Ok(copied)
    }
}

/// Files in `dir` written at or after `since`: what libFuzzer saved during one run (it names an
/// input by its hash, so a crash found again overwrites the earlier file).
fn saved_since(dir: &Path, since: SystemTime) -> Result<Vec<PathBuf>> {
    let mut saved = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let modified = entry.metadata()?.modified()?;
        if modified >= since {
            saved.push(entry.path());
        }
    }
    saved.sort();
    Ok(saved)
}
