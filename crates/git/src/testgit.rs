//! Real git for unit tests: runs `git` with a configuration of its own (no user or system
//! config, fixed author and committer, protocol v0, unquoted paths), so tests that build
//! repositories and packs see the same git everywhere. For tests only (the `test-support`
//! feature gives it to other crates).
use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

/// `git ARGS…` in `dir` with `stdin` fed to it and `env` set; its standard output. Panics with
/// git's standard error when it fails.
pub fn git_in(dir: &Path, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Vec<u8> {
    let mut child = Command::new("git")
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.version=0",
            "-c",
            "core.quotePath=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("HOME", dir.parent().unwrap_or(dir))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "A U Thor")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "A U Thor")
        .env("GIT_COMMITTER_EMAIL", "author@example.com")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_PROTOCOL")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run git");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `git ARGS…` in `dir`; its trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    String::from_utf8(git_in(dir, args, b"", &[]))
        .unwrap()
        .trim()
        .to_owned()
}
