//! `ghgate mask` as a user runs it: files or standard input in, masked text out, a summary per
//! rule on standard error; `--sse` for completion streams; configured rules and the gateway's
//! fingerprint key when a config names them; a bad rule is a one-line configuration error.
use std::{
    fs,
    io::Write,
    process::{Command, Stdio},
};

use ghgate_e2e::{bin, fixtures::github_token};

/// `ghgate mask ARGS…` with `stdin`; (exit code, stdout, stderr).
fn mask(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(bin("ghgate"))
        .arg("mask")
        .args(args)
        .env_remove("GHGATE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn masks_standard_input_and_files_with_a_summary() {
    let token = github_token("Zq8m2Kx4TnR7vB1cW9pL3sJ6hD0fGy");
    let log = format!("2026-11-29 deploy: using {token}\nok\nretry with {token}\n");
    let (code, out, err) = mask(&[], &log);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(&token), "{out}");
    let masked: Vec<&str> = out.lines().collect();
    assert_eq!(masked.len(), 3, "{out}");
    assert!(
        masked[0].starts_with("2026-11-29 deploy: using [MASKED:github-pat:"),
        "{out}"
    );
    assert_eq!(masked[1], "ok");
    // One secret, one fingerprint.
    let fp = |l: &str| l.split("[MASKED:github-pat:").nth(1).unwrap()[..12].to_owned();
    assert_eq!(fp(masked[0]), fp(masked[2]));
    assert!(
        err.contains("2 secret(s) masked") && err.contains("github-pat: 2 (1 distinct)"),
        "{err}"
    );

    // Files, in order, and `-` for standard input between them.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    fs::write(&a, "first\n").unwrap();
    fs::write(&b, format!("key={token}\n")).unwrap();
    let (code, out, err) = mask(&[a.to_str().unwrap(), "-", b.to_str().unwrap()], "middle\n");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("first\nmiddle\nkey=[MASKED:"), "{out}");
    let (code, _, err) = mask(&[dir.path().join("missing").to_str().unwrap()], "");
    assert_eq!(code, 1);
    assert!(err.contains("cannot open") && err.contains("missing"), "{err}");
}

#[test]
fn sse_mode_reassembles_a_token_split_over_events() {
    let token = github_token("Zq8m2Kx4TnR7vB1cW9pL3sJ6hD0fGy");
    let (head, tail) = token.split_at(17);
    let event = |t: &str| {
        format!(
            "data: {}\n\n",
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": t}}]})
        )
    };
    let stream = format!(
        "{}{}{}data: [DONE]\n\n",
        event("token: "),
        event(head),
        event(tail)
    );
    // Line by line, the halves do not look like a token.
    let (_, plain, _) = mask(&[], &stream);
    assert!(plain.contains(head) && plain.contains(tail), "{plain}");
    let (code, out, err) = mask(&["--sse"], &stream);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains(head) && !out.contains(tail),
        "neither half is left: {out}"
    );
    assert!(out.contains("[MASKED:github-pat:"), "{out}");
    assert_eq!(
        out.matches("data: ").count(),
        4,
        "one event in, one event out: {out}"
    );
}

#[test]
fn configured_rules_apply_and_bad_ones_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let base = format!(
        "state_dir = \"{}\"\n[redirect]\ncgroup = \"x\"\n[[intercept]]\nhosts = [\"github.com\"]\nports = [443]\n",
        dir.path().join("state").display()
    );
    fs::write(
        &config,
        format!("{base}[mask]\ndisable = [\"github-pat\"]\n[[mask.rule]]\nid = \"acme\"\nregex = 'acme_[a-z0-9]{{12}}'\nkeywords = [\"acme_\"]\n"),
    )
    .unwrap();
    let token = github_token("Zq8m2Kx4TnR7vB1cW9pL3sJ6hD0fGy");
    let (code, out, err) = mask(
        &["--config", config.to_str().unwrap()],
        &format!("acme_0a1b2c3d4e5f {token}\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("[MASKED:acme:"), "{out}");
    assert!(
        out.contains(&token),
        "github-pat is disabled by the config: {out}"
    );
    let (code, out, _) = mask(&["--config", config.to_str().unwrap(), "--list-rules"], "");
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("acme\t")), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("github-pat\t")), "{out}");

    fs::write(
        &config,
        format!("{base}[[mask.rule]]\nid = \"bad\"\nregex = '[a-z]+_acme'\nkeywords = [\"acme\"]\n"),
    )
    .unwrap();
    let (code, _, err) = mask(&["--config", config.to_str().unwrap()], "");
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("mask.rule[0]") && err.contains("keywords"), "{err}");
}
