//! Real git over smart HTTP through the gateway: `git clone` and `git push` under `ghgate exec`
//! against the real `git http-backend` behind the test upstream. git is configured with
//! `http.sslCAInfo` (ghgate's CA) and `http.curloptResolve`, nothing else. Push certificates
//! are never offered and refused when sent.
use std::time::Duration;

use ghgate_e2e::{
    fixtures::{commit_file, git, pkt, receive_pack_request, served_repo},
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

#[test]
fn push_certificates_are_refused_and_never_offered() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (root, bare, first) = served_repo(tmp.path());
    // The server asks for signed pushes: git-receive-pack advertises push-cert=<nonce>.
    git(&bare, &["config", "receive.certNonceSeed", "ghgate-test-seed"]);
    let s = TlsGateway::start(&["github.com"], true, Some(root), "");
    let port = s.upstream.addr.port();
    let url = format!("https://github.com:{port}/o/r.git");
    s.git(tmp.path(), &["clone", "-q", &url, "work"]);
    let work = tmp.path().join("work");

    // `--signed=if-asked` is not asked through the gateway: git pushes unsigned (it would need
    // a GPG key it does not have otherwise), and the advertisement it saw had no push-cert.
    let head = commit_file(&work, "change.txt", "unsigned\n");
    let out = s
        .git_command(&work, &["push", "--signed=if-asked", "origin", "main"])
        .env("GIT_TRACE_PACKET", "1")
        .output()
        .unwrap();
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{trace}");
    assert_eq!(git(&bare, &["rev-parse", "main"]), head);
    assert!(
        trace.contains("report-status"),
        "the advertisement was traced: {trace}"
    );
    assert!(!trace.contains("push-cert"), "push-cert was offered: {trace}");
    // `--signed=true` needs a server that offers it: git says so and sends nothing.
    commit_file(&work, "change.txt", "signed?\n");
    let out = s.git_output(&work, &["push", "--signed=true", "origin", "main"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the receiving end does not support --signed push"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A client that signs anyway: its commands come inside a push-cert block. Refused before
    // anything goes upstream, in git's words, over the side-band it asked for.
    let zero = "0".repeat(40);
    let mut body = Vec::new();
    for line in [
        "push-cert\0report-status side-band-64k\n".to_owned(),
        "certificate version 0.1\n".into(),
        "pusher t <t@t> 1700000000 +0000\n".into(),
        format!("pushee https://github.com:{port}/o/r.git\n"),
        "nonce 1700000000-0123456789abcdef\n".into(),
        "\n".into(),
        format!("{head} {first} refs/heads/main\n"),
        format!("{zero} {first} refs/heads/signed\n"),
        "-----BEGIN PGP SIGNATURE-----\n".into(),
        "iQEzBAABCAAdFiEE\n".into(),
        "-----END PGP SIGNATURE-----\n".into(),
        "push-cert-end\n".into(),
    ] {
        body.extend(pkt(line));
    }
    body.extend_from_slice(b"0000");
    let served = s.upstream.served();
    let answer = s.raw(
        "github.com",
        &receive_pack_request(&format!("github.com:{port}"), "/o/r.git/git-receive-pack", &body),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\u{2}ghgate: push certificates are not supported through ghgate"),
        "a remote: line says why: {answer}"
    );
    assert!(
        answer.contains("ng refs/heads/main push certificates are not supported through ghgate")
            && answer.contains("ng refs/heads/signed push certificates are not supported"),
        "every ref is rejected: {answer}"
    );
    assert_eq!(s.upstream.served(), served, "nothing went upstream");
    // Asking for the push-cert capability outside a certificate is the same refusal.
    let mut body = pkt(format!(
        "{head} {first} refs/heads/main\0report-status push-cert\n"
    ));
    body.extend_from_slice(b"0000");
    let answer = s.raw(
        "github.com",
        &receive_pack_request(&format!("github.com:{port}"), "/o/r.git/git-receive-pack", &body),
    );
    assert!(
        answer.contains("ng refs/heads/main push certificates are not supported through ghgate"),
        "{answer}"
    );
    assert_eq!(s.upstream.served(), served, "nothing went upstream");
    assert_eq!(
        git(&bare, &["rev-parse", "main"]),
        head,
        "main is as the unsigned push left it"
    );
    let logs = s.gw.wait_log("the refusals", Duration::from_secs(10), |l| {
        l.iter()
            .filter(|l| {
                l["message"] == "exchange"
                    && l["error"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("push certificates")
            })
            .count()
            >= 2
    });
    assert!(
        logs.iter()
            .any(|l| l["message"] == "request refused from its body; nothing was forwarded")
    );
}
