//! Real git over smart HTTP through the gateway: `git clone` and `git push` under `ghgate exec`
//! against the real `git http-backend` behind the test upstream. git is configured with
//! `http.sslCAInfo` (ghgate's CA) and `http.curloptResolve`, nothing else.
use std::{path::Path, process::Command, time::Duration};

use ghgate_e2e::{https::TlsGateway, privileged};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").current_dir(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn commit_file(repo: &Path, name: &str, content: &str) {
    std::fs::write(repo.join(name), content).unwrap();
    git(repo, &["add", "."]);
    git(
        repo,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            name,
        ],
    );
}

#[test]
fn git_clone_and_push_through_the_gateway() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repos");
    let bare = root.join("o/r.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    git(&bare, &["config", "http.receivepack", "true"]);
    // Seed it with one commit, pushed locally.
    let seed = tmp.path().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "-q", "-b", "main"]);
    commit_file(&seed, "README.md", "hello\n");
    git(&seed, &["push", "-q", bare.to_str().unwrap(), "main"]);

    let s = TlsGateway::start(&["github.com"], true, Some(root), "");
    let (gw, port) = (&s.gw, s.upstream.addr.port());
    let url = format!("https://github.com:{port}/o/r.git");
    s.git(tmp.path(), &["clone", "-q", &url, "work"]);
    let work = tmp.path().join("work");
    assert_eq!(
        std::fs::read_to_string(work.join("README.md")).unwrap(),
        "hello\n"
    );

    commit_file(&work, "change.txt", "pushed through ghgate\n");
    let head = git(&work, &["rev-parse", "HEAD"]);
    s.git(&work, &["push", "-q", "origin", "main"]);
    assert_eq!(
        git(&bare, &["rev-parse", "main"]),
        head,
        "the push reached the real repository"
    );

    let logs = gw.wait_log("the receive-pack exchange", Duration::from_secs(10), |l| {
        l.iter().any(|l| {
            l["message"] == "exchange"
                && l["url"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("/git-receive-pack")
        })
    });
    let urls: Vec<&str> = logs
        .iter()
        .filter(|l| l["message"] == "exchange")
        .map(|l| l["url"].as_str().unwrap())
        .collect();
    assert!(
        urls.iter()
            .any(|u| u.ends_with("/info/refs?service=git-upload-pack")),
        "{urls:?}"
    );
    assert!(urls.iter().any(|u| u.ends_with("/git-upload-pack")), "{urls:?}");
    assert!(
        logs.iter()
            .filter(|l| l["message"] == "exchange")
            .all(|l| l["status"] == 200),
        "{urls:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l["message"] == "exchange" && l["comm"].as_str().unwrap_or_default().starts_with("git"))
    );
}
