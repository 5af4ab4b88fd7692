//! Real git over smart HTTP through the gateway: `git clone` and `git push` under `ghgate exec`
//! against the real `git http-backend` behind the test upstream. git is configured with
//! `http.sslCAInfo` (ghgate's CA) and `http.curloptResolve`, nothing else.
use std::time::Duration;

use ghgate_e2e::{
    fixtures::{commit_file, git, served_repo},
    https::TlsGateway,
    privileged,
};

#[test]
fn git_clone_and_push_through_the_gateway() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (root, bare, _) = served_repo(tmp.path());

    let s = TlsGateway::start(&["github.com"], true, Some(root), "");
    let (gw, port) = (&s.gw, s.upstream.addr.port());
    let url = format!("https://github.com:{port}/o/r.git");
    s.git(tmp.path(), &["clone", "-q", &url, "work"]);
    let work = tmp.path().join("work");
    assert_eq!(
        std::fs::read_to_string(work.join("README.md")).unwrap(),
        "README.md",
        "the clone holds the served repository's file"
    );

    let head = commit_file(&work, "change.txt", "pushed through ghgate\n");
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
