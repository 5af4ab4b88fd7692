//! Running child processes as named steps: print the command line, run it, name the step on failure.
//!
//! Every command a user would want to repeat by hand goes through here so it is printed first.
//! This module must never swallow a failure: a non-zero exit is always an error naming the step.
use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    process::{Command, ExitStatus, Output, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The command line as a user could paste it into a shell (environment overrides first).
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=+./:,@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Prints the command line, then runs it with inherited stdio.
pub fn run(step: &str, cmd: &mut Command) -> Result<()> {
    println!("$ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("{step}: could not start `{}`", display(cmd)))?;
    check(step, status)
}

/// Prints the command line, runs it, and hands each stdout line to `on_line` as it arrives
/// (stderr stays on the terminal).
pub fn run_lines(step: &str, cmd: &mut Command, mut on_line: impl FnMut(&str)) -> Result<()> {
    println!("$ {}", display(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("{step}: could not start `{}`", display(cmd)))?;
    let stdout = child.stdout.take().context("child stdout was not piped")?;
    for line in BufReader::new(stdout).lines() {
        on_line(&line.with_context(|| format!("{step}: reading output"))?);
    }
    let status = child.wait().with_context(|| format!("{step}: waiting"))?;
    check(step, status)
}

/// Runs quietly and returns the captured output, or `None` if the program could not be started
/// (typically: not installed). For probes whose failure is an answer, not an error.
pub fn probe(cmd: &mut Command) -> Option<Output> {
    cmd.stdin(Stdio::null()).output().ok()
}

/// Like [`probe`] but only the stdout of a successful run.
pub fn probe_stdout(cmd: &mut Command) -> Option<String> {
    probe(cmd)
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn check(step: &str, status: ExitStatus) -> Result<()> {
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}
