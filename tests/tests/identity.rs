//! Attribution end to end: two callers under different uids, one of them a step of a GitHub
//! Actions-like job, are recorded with the right identity — uid and user, executable, cgroup and
//! the job's facts — and the token variables of their environments are never read.
use std::{os::unix::fs::PermissionsExt, time::Duration};

use ghgate_e2e::{RunnerWorker, eventually, fixtures::files_under, https::TlsGateway, privileged};
use serde_json::Value;

#[test]
fn callers_are_recorded_with_uid_executable_cgroup_and_ci_job() {
    if !privileged() {
        return;
    }
    let s = TlsGateway::start(&["api.github.com"], true, None, "");
    // A value no record may hold: the job's token variables.
    let job_token = format!("job-token-{}-never-read", std::process::id());
    let (url, resolve) = s.url("api.github.com", "/repos/o/r");
    let ca = std::env::temp_dir().join(format!("ghgate-id-ca-{}.pem", std::process::id()));
    std::fs::copy(&s.ca_file, &ca).unwrap();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();

    // A CI step: the runner's worker starts the step's shell with the job's environment; the
    // step runs curl with a cleared environment, as some steps do, and again with a made-up
    // one that claims another repository, workflow and ref (a hostile step passing for a
    // release job): both are the job's.
    let curl = format!(
        "/usr/bin/curl -sS -o /dev/null --cacert {} --resolve {resolve} {url}",
        ca.display()
    );
    let script = format!(
        "env -i {curl} && env GITHUB_REPOSITORY=octo/other GITHUB_WORKFLOW=deploy GITHUB_REF=refs/heads/prod {curl}"
    );
    let worker = RunnerWorker::default();
    let out = worker
        .sh(Some(&s.gw))
        .args(["-c", &script])
        .env("GITHUB_REPOSITORY", "octo/app")
        .env("GITHUB_RUN_ID", "9001")
        .env("GITHUB_RUN_ATTEMPT", "2")
        .env("GITHUB_WORKFLOW", "release")
        .env("GITHUB_JOB", "publish")
        .env("GITHUB_ACTOR", "mona")
        .env("GITHUB_REF", "refs/heads/main")
        .env("GITHUB_TOKEN", &job_token)
        .env("ACTIONS_RUNTIME_TOKEN", &job_token)
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", &job_token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Another user, no CI.
    let out =
        s.gw.exec("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "--cacert",
            ])
            .arg(&ca)
            .args(["--resolve", &resolve, &url])
            .output()
            .unwrap();
    let _ = std::fs::remove_file(&ca);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let list: Vec<Value> = eventually("the three sessions", Duration::from_secs(10), || {
        let l: Vec<Value> =
            s.gw.ghgate_ok(&["sessions", "list", "--json"])
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        (l.len() >= 3).then_some(l)
    });
    let shown = |r: &Value| s.gw.ghgate_ok(&["sessions", "show", r["id"].as_str().unwrap()]);
    let by_uid = |uid: u64| -> Vec<String> { list.iter().filter(|r| r["uid"] == uid).map(shown).collect() };
    let steps = by_uid(0);
    assert_eq!(steps.len(), 2, "both curls of the step: {list:?}");
    for ci in &steps {
        for fact in [
            "GITHUB_REPOSITORY=octo/app",
            "GITHUB_RUN_ID=9001",
            "GITHUB_RUN_ATTEMPT=2",
            "GITHUB_WORKFLOW=release",
            "GITHUB_JOB=publish",
            "GITHUB_ACTOR=mona",
            "GITHUB_REF=refs/heads/main",
        ] {
            assert!(ci.contains(fact), "{fact} missing:\n{ci}");
        }
        for made_up in [
            "GITHUB_REPOSITORY=octo/other",
            "GITHUB_WORKFLOW=deploy",
            "GITHUB_REF=refs/heads/prod",
        ] {
            assert!(
                !ci.contains(made_up),
                "the step's own claim {made_up} was taken:\n{ci}"
            );
        }
        assert!(
            ci.contains("/usr/bin/curl") && ci.contains("root (uid 0)"),
            "{ci}"
        );
        assert!(ci.contains(&s.cg.name), "the caller's cgroup is recorded:\n{ci}");
    }
    let nobody = by_uid(65534).remove(0);
    assert!(
        nobody.contains("uid 65534") && !nobody.contains("GITHUB_"),
        "{nobody}"
    );

    // The token variables were never read: not in any record, export or log.
    let mut places = vec![("the gateway log".to_owned(), s.gw.log_text())];
    for f in files_under(&s.gw.state_dir) {
        places.push((
            f.display().to_string(),
            String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned(),
        ));
    }
    for r in &list {
        let id = r["id"].as_str().unwrap();
        places.push((
            "the JSONL export".into(),
            s.gw.ghgate_ok(&["sessions", "export", id, "--format", "jsonl"]),
        ));
    }
    for (place, text) in places {
        assert!(
            !text.contains(&job_token),
            "{place} holds a token variable's value"
        );
        assert!(
            !text.contains("GITHUB_TOKEN") && !text.contains("ACTIONS_RUNTIME_TOKEN"),
            "{place} names a token variable"
        );
    }
}
