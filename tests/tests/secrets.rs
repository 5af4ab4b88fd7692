//! Push protection and secret tracing end to end, with real curl and git through the real
//! redirect and proxy: a completion from the fake upstream carries a token (masked for the
//! client); a later `git push` carrying that token in a file is refused before anything goes
//! upstream, in git's words naming the rule, the file and the commit and never the token; a new
//! annotated tag of a commit upstream already has, which changes a workflow against the default
//! branch, is held; and `ghgate secrets trace` then shows the suggestion with its prompt and
//! caller, the refused push with its caller, and says of a token suggested but never pushed that
//! it was never pushed. Nothing the gateway writes holds the token.
use std::{io::Write as _, process::Stdio, time::Duration};

use ghgate_e2e::{
    eventually,
    fixtures::{commit_file, files_under, git, github_token, served_repo},
    https::TlsGateway,
    privileged,
};
use serde_json::Value;

/// The example policy shipped with ghgate: its `suggested-secrets` rule refuses a push carrying a
/// secret seen in a response, its `workflow-changes` rule holds workflow changes.
fn example_policy() -> String {
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/config/examples/policy.toml");
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint in the first `[MASKED:github-pat:<fp>]` of `text`.
fn fingerprint(text: &str) -> String {
    let tag = "[MASKED:github-pat:";
    let at = text.find(tag).unwrap_or_else(|| panic!("no {tag} in {text}")) + tag.len();
    text[at..].split(']').next().unwrap().to_owned()
}

#[test]
fn a_suggested_secret_pushed_later_is_refused_and_traced_to_the_suggestion() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (root, bare, _) = served_repo(tmp.path());
    let policy = tmp.path().join("policy.toml");
    std::fs::write(&policy, example_policy()).unwrap();
    let toml = |addr: std::net::SocketAddr| {
        format!(
            "[mask]\nresponses = \"mask\"\n[policy]\nfile = \"{}\"\napi_url = \"https://api.github.com:{}\"\n",
            policy.display(),
            addr.port()
        )
    };
    let s = TlsGateway::start_with(
        &["api.githubcopilot.com", "github.com", "api.github.com"],
        true,
        Some(root),
        None,
        &toml,
    );
    let suggested = github_token("Pq7Rz1Lm9Kx3Vb5Nc8Wd2Fg4Hj6Ty0");
    let never_pushed = github_token("Aa1Bb2Cc3Dd4Ee5Ff6Gg7Hh8Ii9Jj0");

    // Two completions, each suggesting a token: masked for the client.
    let ask = |prompt: &str, token: &str| {
        let text = format!("Put this in deploy/prod.env:\nGITHUB_TOKEN={token}\n");
        let body = serde_json::json!({"messages": [{"role": "user", "content": prompt}]}).to_string();
        let out = s.curl(
            "api.githubcopilot.com",
            &format!("/v1/completion?pieces=7&text={}", hex(&text)),
            &["-N", "-H", "content-type: application/json", "--data", &body],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let answer = String::from_utf8(out.stdout).unwrap();
        assert!(!answer.contains(token), "the token reached the client");
        let joined: String = answer
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| {
                let v: Value = serde_json::from_str(d).unwrap();
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        fingerprint(&joined)
    };
    let fp = ask("write the production deploy config", &suggested);
    let fp_never = ask("show me an example env file", &never_pushed);
    assert_ne!(fp, fp_never);

    // `policy explain`, given the gateway's configuration, scans a blob with its rules and key
    // and knows the fingerprints its record saw in responses: the suggested token is refused.
    let body = tmp.path().join("blob.json");
    std::fs::write(&body, serde_json::json!({ "content": suggested }).to_string()).unwrap();
    let explained = eventually("the suggestion in the record", Duration::from_secs(10), || {
        let out = s.gw.ghgate_ok(&[
            // (`ghgate_ok` adds `--config`, which `--policy` also answers to.)
            "policy",
            "explain",
            "--as",
            "uid=0",
            "--request",
            "POST https://api.github.com/repos/o/r/git/blobs",
            "--body",
            &format!("@{}", body.display()),
        ]);
        out.contains("request verdict: deny").then_some(out)
    });
    eprintln!("{explained}");
    assert!(
        explained.contains("scanned with the gateway's masking rules and fingerprint key"),
        "{explained}"
    );
    assert!(
        explained.contains(&format!("secret_seen: a github-pat secret [{fp}] in (the blob)")),
        "{explained}"
    );
    assert!(explained.contains("\"suggested-secrets\""), "{explained}");
    assert!(!explained.contains(&suggested), "explain printed the token");

    // The suggested token, committed and pushed: refused before anything goes upstream.
    let work = s.clone_o_r(tmp.path());
    let before = git(&bare, &["rev-parse", "main"]);
    std::fs::create_dir_all(work.join("deploy")).unwrap();
    let commit = commit_file(&work, "deploy/prod.env", &format!("GITHUB_TOKEN={suggested}\n"));
    // The caller's push, with the gateway's answer.
    let out = s.git_output(&work, &["push", "origin", "main"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{err}");
    assert!(!out.status.success(), "the push went through:\n{err}");
    assert!(err.contains("! [remote rejected] main -> main"), "{err}");
    assert!(err.contains("\"suggested-secrets\""), "the rule is named:\n{err}");
    assert!(err.contains("deploy/prod.env"), "the file is named:\n{err}");
    assert!(
        err.contains(&format!("commit {}", &commit[..7])),
        "the commit is named:\n{err}"
    );
    assert!(
        err.contains(&format!(
            "remote: ghgate: refs/heads/main: a github-pat secret [{fp}] in deploy/prod.env"
        )),
        "{err}"
    );
    assert!(err.contains("a secret the gateway saw in a response"), "{err}");
    assert!(!err.contains(&suggested), "git's output holds the token:\n{err}");
    assert_eq!(
        git(&bare, &["rev-parse", "main"]),
        before,
        "nothing went upstream"
    );
    let has_commit = std::process::Command::new("git")
        .current_dir(&bare)
        .args(["cat-file", "-e", &commit])
        .status()
        .unwrap();
    assert!(!has_commit.success(), "the commit reached the upstream");

    // A new annotated tag of a commit upstream already has (pushed there on a side branch, not
    // through the gateway), which changes a workflow against the default branch: held.
    git(&work, &["reset", "-q", "--hard", &before]);
    git(&work, &["checkout", "-q", "-b", "side"]);
    std::fs::create_dir_all(work.join(".github/workflows")).unwrap();
    let wf = commit_file(&work, ".github/workflows/ci.yml", "on: push\n");
    git(&work, &["push", "-q", bare.to_str().unwrap(), "side"]);
    git(
        &work,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "tag",
            "-a",
            "-m",
            "release",
            "v1",
            &wf,
        ],
    );
    let out = s.git_output(&work, &["push", "origin", "v1"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the tag went through:\n{err}");
    assert!(
        err.contains("! [remote rejected] v1 -> v1 (held for approval"),
        "{err}"
    );
    assert!(
        err.contains("changes to GitHub Actions workflows need two maintainers"),
        "{err}"
    );

    // The trace: the suggestion (prompt, caller), the refused push (caller), over a verified store.
    let trace = eventually("the push's record", Duration::from_secs(10), || {
        let t = s.gw.ghgate_ok(&["secrets", "trace", &fp]);
        t.contains("PUSHED").then_some(t)
    });
    eprintln!("{trace}");
    assert!(trace.contains("over a store that verifies"), "{trace}");
    let received = trace
        .find("RECEIVED in a response")
        .unwrap_or_else(|| panic!("{trace}"));
    let pushed = trace
        .find("PUSHED to o/r refs/heads/main")
        .unwrap_or_else(|| panic!("{trace}"));
    assert!(received < pushed, "in time order:\n{trace}");
    assert!(
        trace.contains("prompt: write the production deploy config"),
        "{trace}"
    );
    assert!(trace.contains("/v1/completion"), "{trace}");
    assert!(
        trace.contains(&format!(
            "commit {commit}, file deploy/prod.env: REFUSED by rule #7 \"suggested-secrets\""
        )),
        "{trace}"
    );
    let callers: Vec<&str> = trace.lines().filter(|l| l.contains("caller uid 0")).collect();
    assert!(
        callers.iter().any(|l| l.contains("curl")) && callers.iter().any(|l| l.contains("git")),
        "the caller of each (curl, then git):\n{trace}"
    );
    assert!(!trace.contains("never pushed"), "{trace}");

    // The other token, by value on standard input: suggested, never pushed.
    let (text, ok) = s.gw.trace_value(&never_pushed);
    assert!(ok, "{text}");
    eprintln!("{text}");
    assert!(text.contains(&format!("fingerprint {fp_never}")), "{text}");
    assert!(text.contains("prompt: show me an example env file"), "{text}");
    assert!(
        text.contains("suggested but never pushed within the verified range"),
        "{text}"
    );
    assert!(!text.contains(&never_pushed), "the value is never printed");

    let list = s.gw.ghgate_ok(&["secrets", "list"]);
    assert!(list.contains("over a store that verifies"), "{list}");
    eprintln!("{list}");
    let line = list
        .lines()
        .find(|l| l.starts_with(&fp))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("pushed 1 (refused 1, held 0, forwarded 0)"),
        "{line}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with(&fp_never) && l.contains("pushed 0")),
        "{list}"
    );

    // The HTML export of the suggesting session links the suggestion to its later push.
    let mut pages = String::new();
    for row in s.gw.ghgate_ok(&["sessions", "list", "--json"]).lines() {
        let r: Value = serde_json::from_str(row).unwrap();
        pages += &s.gw.ghgate_ok(&[
            "sessions",
            "export",
            r["id"].as_str().unwrap(),
            "--format",
            "html",
        ]);
    }
    assert!(
        pages.contains("later pushed: <a href=\"#push-"),
        "the suggestion links its push"
    );
    assert!(
        pages.contains("Secrets in the pushed files"),
        "the push lists its secrets"
    );

    // Be the attacker: the suggested token hidden elsewhere in a push. Each push is refused
    // naming where the token is, never the token, and nothing goes upstream.
    let refused = |what: &str, refspec: &str, place: &str| {
        let out = s.git_output(&work, &["push", "origin", refspec]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{what}: the push went through:\n{err}");
        assert!(err.contains("! [remote rejected]"), "{what}:\n{err}");
        assert!(
            err.contains(&format!("a github-pat secret [{fp}] in {place}")),
            "{what}: the place is named:\n{err}"
        );
        assert!(
            !err.contains(&suggested),
            "{what}: git's output holds the token:\n{err}"
        );
        assert_eq!(
            git(&bare, &["rev-parse", "main"]),
            before,
            "{what}: nothing went upstream"
        );
        err
    };
    let commit_as = |message: &str| {
        git(&work, &["add", "."]);
        git(
            &work,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-q",
                "-m",
                message,
            ],
        );
        git(&work, &["rev-parse", "HEAD"])
    };
    git(&work, &["checkout", "-q", "main"]);
    git(&work, &["reset", "-q", "--hard", &before]);
    // In a commit message only (the files are innocent).
    std::fs::write(work.join("notes.txt"), "release notes\n").unwrap();
    let in_message = commit_as(&format!("deploy\n\nGITHUB_TOKEN={suggested}\n"));
    let err = refused("a commit message", "main", "<commit message>");
    assert!(err.contains(&format!("(commit {})", &in_message[..7])), "{err}");
    // In a file git stores as a delta against an earlier version in the same pack: the token
    // exists only once the delta is applied.
    git(&work, &["reset", "-q", "--hard", &before]);
    let mut config: String = (0..400).map(|i| format!("setting_{i} = value {i}\n")).collect();
    std::fs::write(work.join("config.txt"), &config).unwrap();
    let plain = commit_as("config");
    config.push_str(&format!("token = {suggested}\n"));
    std::fs::write(work.join("config.txt"), &config).unwrap();
    let with_token = commit_as("tweak config");
    assert!(
        pack_has_delta_blob(&work, &format!("{with_token}\n^{before}\n")),
        "git packs the second version as a delta"
    );
    let err = refused("a delta blob", "main", "config.txt");
    assert!(
        err.contains(&format!("(commit {})", &with_token[..7])),
        "the commit that adds it:\n{err}"
    );
    assert!(!err.contains(&plain[..7]), "not the commit before it:\n{err}");
    // In the message of an annotated tag of a commit upstream already has (the pack holds only
    // the tag).
    git(&work, &["reset", "-q", "--hard", &before]);
    git(
        &work,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "tag",
            "-a",
            "-m",
            &format!("release\n\n{suggested}\n"),
            "v2",
            &before,
        ],
    );
    refused("a tag message", "v2", "<message of tag v2>");
    assert!(git(&bare, &["tag", "-l"]).is_empty(), "no tag went upstream");

    // The fingerprint as a person may paste it: upper case, spaces, or the whole masked tag.
    for given in [
        format!("  {}\n", fp.to_uppercase()),
        format!("[MASKED:github-pat:{fp}]"),
    ] {
        let t = s.gw.ghgate_ok(&["secrets", "trace", &given]);
        assert!(t.contains(&format!("fingerprint {fp}")), "{given:?}:\n{t}");
        assert!(t.contains("PUSHED to o/r refs/tags/v2"), "{given:?}:\n{t}");
    }
    let t = eventually("every refused push in the trace", Duration::from_secs(10), || {
        let t = s.gw.ghgate_ok(&["secrets", "trace", &fp]);
        (t.matches("PUSHED").count() >= 4).then_some(t)
    });
    eprintln!("{t}");
    assert!(
        t.contains(&format!("commit {in_message}, file <commit message>: REFUSED")),
        "{t}"
    );
    assert!(
        t.contains(&format!("commit {with_token}, file config.txt: REFUSED")),
        "{t}"
    );
    assert!(
        t.contains(&format!("commit {before}, file <message of tag v2>: REFUSED")),
        "{t}"
    );
    // Not a fingerprint: refused without echoing what was given (it may be the secret).
    let out = s.gw.ghgate(&["secrets", "trace", &suggested]);
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("not a fingerprint") && !said.contains(&suggested),
        "{said}"
    );

    // Neither the gateway's log nor any file it wrote holds either token.
    let log = s.gw.log_text();
    for token in [&suggested, &never_pushed] {
        assert!(!log.contains(token.as_str()), "the gateway's log holds a token");
        for file in files_under(&s.gw.state_dir) {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "{} holds a token in clear",
                file.display()
            );
        }
    }
    assert!(
        log.contains("a push or API write carries a secret"),
        "the finding is logged (by fingerprint)"
    );

    // A store changed behind the gateway's back answers nothing.
    let mut segments: Vec<_> = files_under(&s.gw.state_dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let first = segments.first().expect("a segment");
    let mut bytes = std::fs::read(first).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(first, &bytes).unwrap();
    for args in [&["secrets", "trace", fp.as_str()][..], &["secrets", "list"]] {
        let out = s.gw.ghgate(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(
            text.contains("FAILED: the store does not verify, so nothing is answered from it"),
            "{text}"
        );
        assert!(
            !text.contains("PUSHED") && !text.contains(&fp_never),
            "{args:?} answered:\n{text}"
        );
    }
}

/// Whether git, packing `revs` as a push would, stores a blob as a delta.
fn pack_has_delta_blob(repo: &std::path::Path, revs: &str) -> bool {
    let mut child = std::process::Command::new("git")
        .current_dir(repo)
        .args(["pack-objects", "--revs", "--delta-base-offset", "--stdout", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(revs.as_bytes()).unwrap();
    let pack = child.wait_with_output().unwrap().stdout;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.pack"), &pack).unwrap();
    git(repo, &["index-pack", dir.path().join("p.pack").to_str().unwrap()]);
    let listing = git(
        repo,
        &["verify-pack", "-v", dir.path().join("p.idx").to_str().unwrap()],
    );
    // Delta entries list their depth and base after the sizes.
    listing.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() == 7 && f[1] == "blob"
    })
}
