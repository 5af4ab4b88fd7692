//! Policy and human approval, end to end with real git: pushes through the gateway are decided
//! ref by ref (fast-forward or not from the compare API, changed paths from the pushed pack),
//! held ones wait for an approver who decides with `ghgate approvals` over the control socket
//! as another user, and every decision and approval step lands in the session store.
//!
//! The git clients run as root inside the test's cgroup; approvers run as `nobody` (in the
//! approver group) and `daemon` (not in it) through `setpriv`, each under a login uid of its own
//! (the kernel's, which `setpriv` keeps) unless a test gives it the requester's.
use std::{
    io::{Read as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ghgate_e2e::{
    bin, eventually,
    fixtures::{self, git},
    https::TlsGateway,
    privileged,
};
use serde_json::Value;

const POLICY: &str = r#"
default = "allow"

[approvers.maintainers]
# root is the pusher in these tests (so its own approval is refused); nobody approves, and so
# does alice, known by an OIDC ID token over HTTPS.
uids = [0, 65534]
users = ["alice@example.test"]

[[rule]]
name = "no-delete-protected"
action = "deny"
ref = ["refs/heads/main", "refs/heads/release/*"]
ref_op = ["delete"]
message = "protected branches cannot be deleted"

[[rule]]
name = "force-push-main"
action = "require_approval"
approvers = "maintainers"
ref = ["refs/heads/main"]
ref_op = ["non-fast-forward"]
message = "force pushes to main need a maintainer"

[[rule]]
name = "workflows"
action = "require_approval"
approvers = "maintainers"
paths = [".github/workflows/*"]
message = "workflow changes need a maintainer"

[[rule]]
name = "short-lived"
action = "require_approval"
approvers = "maintainers"
ref = ["refs/heads/expiring"]
expires = "2s"

[[rule]]
name = "no-admin"
action = "deny"
host = ["api.github.com"]
path = ["/admin/*"]
message = "no site administration through agents"

[[rule]]
name = "api-hold"
action = "require_approval"
approvers = "maintainers"
hold = "60s"
host = ["api.github.com"]
method = ["PUT"]
path = ["/repos/*/hold"]

[[rule]]
name = "api-delete"
action = "require_approval"
approvers = "maintainers"
host = ["api.github.com"]
method = ["DELETE"]
path = ["/repos/*"]

[[rule]]
name = "frozen"
action = "deny"
repository = ["o/r"]
git_service = ["receive-pack"]
ref = ["refs/heads/frozen"]
message = "frozen stays frozen"
"#;

struct Setup {
    s: TlsGateway,
    tmp: tempfile::TempDir,
    work: PathBuf,
    bare: PathBuf,
    policy: PathBuf,
    socket: PathBuf,
}

impl Setup {
    fn start(extra_toml: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        // Approvers other than root reach the control socket through this directory.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let run = tmp.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = run.join("control.sock");
        let (root, bare, _) = fixtures::served_repo(tmp.path());
        let policy = tmp.path().join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        let toml = |addr: std::net::SocketAddr| {
            format!(
                "[policy]\nfile = \"{}\"\napi_url = \"https://api.github.com:{}\"\n\n[approvals]\nsocket = \"{}\"\n{extra_toml}",
                policy.display(),
                addr.port(),
                socket.display()
            )
        };
        let s = TlsGateway::start_with(&["github.com", "api.github.com"], true, Some(root), None, &toml);
        let url = format!("https://github.com:{}/o/r.git", s.upstream.addr.port());
        s.git(tmp.path(), &["clone", "-q", &url, "work"]);
        let work = tmp.path().join("work");
        git(&work, &["config", "user.name", "t"]);
        git(&work, &["config", "user.email", "t@t"]);
        Setup {
            s,
            work,
            bare,
            policy,
            socket,
            tmp,
        }
    }

    /// `git push ARGS…` through the gateway; its output (it may fail).
    fn push(&self, args: &[&str]) -> Output {
        let mut all = vec!["push", "origin"];
        all.extend_from_slice(args);
        self.s.git_output(&self.work, &all)
    }

    /// `ghgate approvals ARGS… --socket S` as `uid` (root runs it directly), a person of its
    /// own: logged in as `uid` (root keeps the harness's login).
    fn approvals(&self, uid: u32, args: &[&str]) -> Output {
        self.approvals_as(uid, (uid != 0).then_some(uid), args)
    }

    /// `ghgate approvals ARGS… --socket S` as `uid`, under login uid `login` (else the
    /// harness's).
    fn approvals_as(&self, uid: u32, login: Option<u32>, args: &[&str]) -> Output {
        let mut cmd = if uid == 0 {
            Command::new(bin("ghgate"))
        } else {
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
            ])
            .arg(bin("ghgate"));
            c
        };
        cmd.arg("approvals")
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .current_dir("/");
        match login {
            Some(login) => ghgate_e2e::with_login(&cmd, login).output().unwrap(),
            None => cmd.output().unwrap(),
        }
    }

    /// `git push ARGS…` through the gateway by a person logged in as `login`.
    fn push_as(&self, login: u32, args: &[&str]) -> Output {
        let mut all = vec!["push", "origin"];
        all.extend_from_slice(args);
        ghgate_e2e::with_login(&self.s.git_command(&self.work, &all), login)
            .output()
            .unwrap()
    }

    /// A fast-forward of main, then a rewrite of it force-pushed and held, both pushed by a person
    /// logged in as `login` (else by the harness): (the fast-forward, the rewrite, the approval id).
    fn held_force_push(&self, login: Option<u32>) -> (String, String, String) {
        let push = |args: &[&str]| match login {
            Some(login) => self.push_as(login, args),
            None => self.push(args),
        };
        let ff = fixtures::commit(&self.work, "one.txt");
        let out = push(&["main"]);
        assert!(out.status.success(), "fast-forward refused: {}", stderr(&out));
        let forced = rewrite_last(&self.work, "forced");
        let out = push(&["--force", "main"]);
        assert!(!out.status.success(), "a held force push succeeded");
        (ff, forced, approval_id(&stderr(&out)))
    }

    /// `out`, the retry of a force push to main approved under `id`, passed: main is `forced`
    /// upstream, and the sessions show the approval approved by someone described as `approver`.
    #[track_caller]
    fn assert_approved(&self, out: &Output, forced: &str, id: &str, approver: &str) {
        assert!(
            out.status.success(),
            "the approved push was refused: {}",
            stderr(out)
        );
        assert_eq!(self.upstream_ref("refs/heads/main").as_deref(), Some(forced));
        let shown = self.shown();
        assert!(
            shown.contains(&format!("approval {id} approved")) && shown.contains(approver),
            "{shown}"
        );
    }

    /// The upstream's value of a ref, if it has it.
    fn upstream_ref(&self, name: &str) -> Option<String> {
        let out = Command::new("git")
            .current_dir(&self.bare)
            .args(["rev-parse", "--verify", "-q", name])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Every policy decision recorded so far.
    fn decisions(&self) -> Vec<Value> {
        self.s.gw.decisions()
    }

    /// The text of `sessions show` for every session.
    fn shown(&self) -> String {
        let mut out = String::new();
        for line in self.s.gw.ghgate_ok(&["sessions", "list", "--json"]).lines() {
            let row: Value = serde_json::from_str(line).unwrap();
            out += &self
                .s
                .gw
                .ghgate_ok(&["sessions", "show", row["id"].as_str().unwrap()]);
        }
        out
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The approval id in git's output (`held for approval apr-…`).
fn approval_id(text: &str) -> String {
    let at = text
        .find("held for approval apr-")
        .unwrap_or_else(|| panic!("no approval id in:\n{text}"));
    text[at + "held for approval ".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

/// Rewrites the last commit of `work` (a different id, so pushing it is a force push).
fn rewrite_last(work: &Path, content: &str) -> String {
    std::fs::write(work.join("rewritten.txt"), content).unwrap();
    git(work, &["add", "."]);
    git(work, &["commit", "-q", "--amend", "-m", content]);
    git(work, &["rev-parse", "HEAD"])
}

#[test]
fn a_force_push_to_main_is_held_until_an_approver_approves_it_and_then_passes_once() {
    if !privileged() {
        return;
    }
    let t = Setup::start("");
    // A fast-forward to main is allowed.
    let ff = fixtures::commit(&t.work, "one.txt");
    let out = t.push(&["main"]);
    assert!(out.status.success(), "fast-forward refused: {}", stderr(&out));
    assert_eq!(t.upstream_ref("refs/heads/main").as_deref(), Some(ff.as_str()));

    // A rewrite of it is a force push: held, in git's words, with the approval id.
    let forced = rewrite_last(&t.work, "forced");
    let out = t.push(&["--force", "main"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "a held force push succeeded:\n{err}");
    assert!(
        err.contains("[remote rejected] main -> main (held for approval apr-"),
        "{err}"
    );
    assert!(err.contains("force pushes to main need a maintainer"), "{err}");
    let id = approval_id(&err);
    assert_eq!(t.upstream_ref("refs/heads/main").as_deref(), Some(ff.as_str()));

    // Who may approve: not the pusher, not someone outside the group.
    let own = t.approvals(0, &["approve", &id]);
    assert!(!own.status.success(), "self-approval was accepted");
    assert!(
        stderr(&own).contains("requested approval") && stderr(&own).contains("cannot decide it"),
        "{}",
        stderr(&own)
    );
    let outsider = t.approvals(1, &["approve", &id]);
    assert!(
        !outsider.status.success(),
        "an approver outside the group was accepted"
    );
    assert!(stderr(&outsider).contains("maintainers"), "{}", stderr(&outsider));
    let listed = t.approvals(65534, &["list"]);
    assert!(
        stdout(&listed).contains(&id),
        "{}{}",
        stdout(&listed),
        stderr(&listed)
    );
    let ok = t.approvals(65534, &["approve", &id, "--reason", "release hotfix"]);
    assert!(ok.status.success(), "{}", stderr(&ok));

    // The same push now passes, once.
    let out = t.push(&["--force", "main"]);
    assert!(
        out.status.success(),
        "the approved push was refused: {}",
        stderr(&out)
    );
    assert_eq!(
        t.upstream_ref("refs/heads/main").as_deref(),
        Some(forced.as_str())
    );

    // A different force push is held again, under a new approval.
    rewrite_last(&t.work, "forced again");
    let out = t.push(&["--force", "main"]);
    assert!(!out.status.success());
    let again = approval_id(&stderr(&out));
    assert_ne!(again, id);
    assert_eq!(
        t.upstream_ref("refs/heads/main").as_deref(),
        Some(forced.as_str())
    );

    // Every decision is recorded with its rule; the approval's steps are in the sessions.
    let decisions = t.decisions();
    let kinds: Vec<(&str, &str, &str)> = decisions
        .iter()
        .map(|d| {
            (
                d["ref_update"]["kind"].as_str().unwrap_or(""),
                d["rule"].as_str().unwrap_or(""),
                d["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("fast-forward", "the default", "passed")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("non-fast-forward", "rule #2 \"force-push-main\"", "held")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("non-fast-forward", "rule #2 \"force-push-main\"", "passed")),
        "{kinds:?}"
    );
    // The kind came from the pushed commits and the compare API, not from a failure to tell.
    for d in decisions.iter().filter(|d| !d["ref_update"].is_null()) {
        assert_eq!(
            d["ref_update"]["kind_from"].as_str(),
            Some("the pushed commits and the compare API"),
            "{d}"
        );
    }
    let shown = t.shown();
    for step in ["requested", "approved", "used"] {
        assert!(
            shown.contains(&format!("approval {id} {step}")),
            "no {step} step in:\n{shown}"
        );
    }
    assert!(shown.contains("release hotfix"), "{shown}");
}

#[test]
fn deletes_workflow_changes_partial_and_atomic_pushes_follow_the_policy_per_ref() {
    if !privileged() {
        return;
    }
    let t = Setup::start("");
    // A protected branch to delete.
    git(&t.work, &["branch", "release/1"]);
    let out = t.push(&["release/1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = t.push(&[":release/1"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("protected branches cannot be deleted"), "{err}");
    assert!(
        t.upstream_ref("refs/heads/release/1").is_some(),
        "the denied delete went through"
    );

    // A push touching a workflow file is held; one that does not passes.
    git(&t.work, &["checkout", "-q", "-b", "wf"]);
    std::fs::create_dir_all(t.work.join(".github/workflows")).unwrap();
    fixtures::commit(&t.work, ".github/workflows/ci.yml");
    git(&t.work, &["checkout", "-q", "main"]);
    git(&t.work, &["checkout", "-q", "-b", "feature"]);
    let feature = fixtures::commit(&t.work, "feature.txt");
    let out = t.push(&["wf", "feature"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("[remote rejected] wf -> wf (held for approval apr-"),
        "{err}"
    );
    assert!(err.contains("workflow changes need a maintainer"), "{err}");
    assert!(err.contains("[new branch]      feature -> feature"), "{err}");
    assert_eq!(
        t.upstream_ref("refs/heads/feature").as_deref(),
        Some(feature.as_str())
    );
    assert!(t.upstream_ref("refs/heads/wf").is_none());

    // Atomic: nothing goes up when one ref is held.
    git(&t.work, &["checkout", "-q", "-b", "feature2"]);
    fixtures::commit(&t.work, "feature2.txt");
    let out = t.push(&["--atomic", "wf", "feature2"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("atomic push failed"), "{err}");
    assert!(
        t.upstream_ref("refs/heads/feature2").is_none(),
        "an atomic push went up in part"
    );

    // The paths came from the pushed packs (sent whole: the gateway advertises no-thin).
    let decisions = t.decisions();
    let paths_of = |name: &str| -> Vec<Value> {
        decisions
            .iter()
            .filter(|d| d["ref_update"]["name"] == name)
            .inspect(|d| assert!(d["ref_update"]["paths_unknown"].is_null(), "{d}"))
            .map(|d| d["ref_update"]["paths"].clone())
            .collect()
    };
    assert!(
        paths_of("refs/heads/wf")
            .iter()
            .all(|p| p == &serde_json::json!([".github/workflows/ci.yml"]))
    );
    assert_eq!(
        paths_of("refs/heads/feature"),
        [serde_json::json!(["feature.txt"])]
    );

    // `policy explain` says what the gateway did, for each ref it decided.
    assert!(decisions.len() >= 6, "{decisions:#?}");
    for d in &decisions {
        let r = &d["ref_update"];
        let Some(name) = r["name"].as_str() else { continue };
        // `--config` (the gateway's, added by `ghgate_ok`) leads explain to the policy file.
        let mut args = vec![
            "policy".to_owned(),
            "explain".into(),
            "--as".into(),
            "uid=0,user=root,comm=git-remote-http".into(),
            "--request".into(),
            format!(
                "POST https://github.com:{}/o/r.git/git-receive-pack",
                t.s.upstream.addr.port()
            ),
            "--ref-update".into(),
            format!(
                "{} {} {name}",
                r["old"].as_str().unwrap(),
                r["new"].as_str().unwrap()
            ),
        ];
        match r["kind"].as_str() {
            Some("fast-forward") => args.push("--fast-forward".into()),
            Some("non-fast-forward") => args.push("--non-fast-forward".into()),
            _ => {}
        }
        for p in r["paths"].as_array().into_iter().flatten() {
            args.push("--changes".into());
            args.push(p.as_str().unwrap().into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let explained = t.s.gw.ghgate_ok(&args);
        let rule = d["rule"].as_str().unwrap();
        assert!(
            explained.contains(rule) && explained.contains(d["action"].as_str().unwrap()),
            "the gateway decided {d} but `policy explain` says:\n{explained}"
        );
    }

    // A push larger than git's post buffer (a probe request first, then a chunked body) is
    // read whole for its paths, and passes.
    git(&t.work, &["checkout", "-q", "-b", "big"]);
    let mut noise = vec![0u8; 3 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut noise)
        .unwrap();
    std::fs::write(t.work.join("big.bin"), &noise).unwrap();
    git(&t.work, &["add", "."]);
    git(&t.work, &["commit", "-q", "-m", "big"]);
    let out = t.push(&["big"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let big: Vec<Value> = t
        .decisions()
        .into_iter()
        .filter(|d| d["ref_update"]["name"] == "refs/heads/big")
        .collect();
    assert_eq!(big.len(), 1, "{big:#?}");
    // Both of its commits are new upstream (feature2's atomic push went nowhere).
    assert_eq!(
        big[0]["ref_update"]["paths"],
        serde_json::json!(["big.bin", "feature2.txt"])
    );

    // The policy file is reloaded when it changes: without its first rule, the delete passes.
    let relaxed = POLICY.replacen("ref_op = [\"delete\"]", "ref_op = [\"create\"]", 1);
    std::fs::write(&t.policy, relaxed).unwrap();
    eventually("the policy reload", Duration::from_secs(10), || {
        t.s.gw.log_text().contains("policy reloaded").then_some(())
    });
    let out = t.push(&[":release/1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t.upstream_ref("refs/heads/release/1").is_none());
}

/// A loopback webhook receiver that fails its first `fail` requests.
struct Hook {
    port: u16,
    bodies: Arc<Mutex<Vec<String>>>,
    attempts: Arc<Mutex<u32>>,
}

impl Hook {
    fn start(fail: u32) -> Hook {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(0));
        let (b, a) = (bodies.clone(), attempts.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let body = ghgate_e2e::read_request(&mut conn).map(|(_, body)| body);
                let Some(body) = body else { continue };
                let n = {
                    let mut a = a.lock().unwrap();
                    *a += 1;
                    *a
                };
                let status = if n <= fail {
                    "503 Service Unavailable"
                } else {
                    b.lock().unwrap().push(body);
                    "200 OK"
                };
                let _ = conn.write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
                );
            }
        });
        Hook {
            port,
            bodies,
            attempts,
        }
    }
}

#[test]
fn approvals_expire_and_a_failing_webhook_is_retried_without_holding_anyone_up() {
    if !privileged() {
        return;
    }
    let hook = Hook::start(2);
    let t = Setup::start(&format!(
        "\n[approvals.webhook]\nurl = \"http://127.0.0.1:{}/hook\"\nretries = 5\nbackoff_ms = 200\n",
        hook.port
    ));
    git(&t.work, &["checkout", "-q", "-b", "expiring"]);
    fixtures::commit(&t.work, "soon.txt");
    let began = Instant::now();
    let out = t.push(&["expiring"]);
    let took = began.elapsed();
    assert!(!out.status.success());
    let id = approval_id(&stderr(&out));
    assert!(
        took < Duration::from_secs(20),
        "the push waited for the webhook ({took:?})"
    );
    // The webhook gets the pending approval on its third attempt.
    let body = eventually("the webhook delivery", Duration::from_secs(30), || {
        hook.bodies.lock().unwrap().first().cloned()
    });
    let json: Value = serde_json::from_str(&body).unwrap();
    assert!(json.to_string().contains(&id), "{json}");
    assert!(*hook.attempts.lock().unwrap() >= 3);
    // Past its expiry, the approval cannot be given.
    std::thread::sleep(Duration::from_millis(2500));
    let late = t.approvals(65534, &["approve", &id]);
    assert!(!late.status.success(), "an expired approval was accepted");
    assert!(stderr(&late).contains("expired"), "{}", stderr(&late));
    let shown = eventually("the notified and expired steps", Duration::from_secs(10), || {
        let s = t.shown();
        (s.contains(&format!("approval {id} notified")) && s.contains(&format!("approval {id} expired")))
            .then_some(s)
    });
    assert!(shown.contains(&format!("approval {id} requested")), "{shown}");
}

#[test]
fn an_api_call_held_for_approval_passes_once_with_the_same_body() {
    if !privileged() {
        return;
    }
    let t = Setup::start("");
    // (Not `DELETE /repos/o/r`: deleting the repository deletes main, which the policy denies.)
    let delete = |body: &str| {
        let out = t.s.curl(
            "api.github.com",
            "/repos/o/r/issues/comments/1",
            &["-X", "DELETE", "--data", body, "-w", "\n%{http_code}"],
        );
        stdout(&out)
    };
    // Decided from the head alone: a denied call never reaches the upstream; others pass.
    let served = t.s.upstream.served();
    let admin = stdout(&t.s.curl("api.github.com", "/admin/users", &["-w", "\n%{http_code}"]));
    assert!(admin.ends_with("403"), "{admin}");
    assert!(
        admin.contains("denied by rule #5 \\\"no-admin\\\": no site administration through agents"),
        "{admin}"
    );
    assert_eq!(
        t.s.upstream.served(),
        served,
        "a denied call reached the upstream"
    );
    let get = stdout(&t.s.curl("api.github.com", "/repos/o/r", &["-w", "\n%{http_code}"]));
    assert!(get.ends_with("200"), "{get}");
    let decided: Vec<(String, String, String)> = t
        .decisions()
        .iter()
        .map(|d| {
            let f = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
            (f("action"), f("rule"), f("outcome"))
        })
        .collect();
    for want in [
        ("deny", "rule #5 \"no-admin\"", "refused"),
        ("allow", "the default", "passed"),
    ] {
        let want = (want.0.to_owned(), want.1.to_owned(), want.2.to_owned());
        assert!(decided.contains(&want), "{want:?} not in {decided:?}");
    }

    let first = delete("a");
    assert!(first.ends_with("403"), "{first}");
    let id = approval_id(&first);
    let ok = t.approvals(65534, &["approve", &id]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // Another body is another operation.
    let other = delete("b");
    assert!(other.ends_with("403"), "{other}");
    assert_ne!(approval_id(&other), id);
    let passed = delete("a");
    assert!(
        passed.contains("method=DELETE path=/repos/o/r/issues/comments/1"),
        "{passed}"
    );
    assert!(passed.ends_with("200"), "{passed}");
    // Used once.
    let again = delete("a");
    assert!(again.ends_with("403"), "{again}");
    assert_ne!(approval_id(&again), id);

    // A denied operation stays refused, with who denied it and why.
    let denied = delete("c");
    let denied_id = approval_id(&denied);
    let no = t.approvals(65534, &["deny", &denied_id, "--reason", "not today"]);
    assert!(no.status.success(), "{}", stderr(&no));
    let retried = delete("c");
    assert!(retried.ends_with("403"), "{retried}");
    assert!(
        retried.contains(&format!("approval {denied_id} was denied by nobody"))
            && retried.contains("not today"),
        "{retried}"
    );

    // A rule with `hold` keeps the request open until an approver decides.
    let began = Instant::now();
    std::thread::scope(|scope| {
        let held = scope.spawn(|| {
            stdout(&t.s.curl(
                "api.github.com",
                "/repos/o/r/hold",
                &["-X", "PUT", "--data", "x", "-w", "\n%{http_code}"],
            ))
        });
        let id = eventually("the held request's approval", Duration::from_secs(20), || {
            let out = t.approvals(65534, &["list", "--json"]);
            stdout(&out).lines().find_map(|l| {
                let a: Value = serde_json::from_str(l).ok()?;
                (a["operation"]["path"] == "/repos/o/r/hold").then(|| a["id"].as_str().unwrap().to_owned())
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!held.is_finished(), "the request was not held open");
        let ok = t.approvals(65534, &["approve", &id]);
        assert!(ok.status.success(), "{}", stderr(&ok));
        let answer = held.join().unwrap();
        assert!(answer.contains("method=PUT path=/repos/o/r/hold"), "{answer}");
        assert!(answer.ends_with("200"), "{answer}");
    });
    assert!(began.elapsed() < Duration::from_secs(50));
    let _ = &t.tmp;
}

#[test]
fn a_push_spelled_otherwise_is_the_same_push_to_the_policy() {
    if !privileged() {
        return;
    }
    let t = Setup::start("");
    let port = t.s.upstream.addr.port();
    let head = fixtures::commit(&t.work, "frozen.txt");
    // Real git with the repository in upper case, as GitHub (and the test upstream) take it:
    // the rule naming o/r denies it.
    let upper = format!("https://github.com:{port}/O/R.GIT");
    let out =
        t.s.git_output(&t.work, &["push", &upper, "HEAD:refs/heads/frozen"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "a denied push succeeded:\n{err}");
    assert!(
        err.contains(
            "[remote rejected] HEAD -> frozen (denied by ghgate rule #8 \"frozen\": frozen stays frozen)"
        ),
        "{err}"
    );
    assert_eq!(t.upstream_ref("refs/heads/frozen"), None);
    // The same spelling reaches the upstream for another ref: the refusal was the rule's.
    let out =
        t.s.git_output(&t.work, &["push", &upper, "HEAD:refs/heads/thawed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        t.upstream_ref("refs/heads/thawed").as_deref(),
        Some(head.as_str())
    );
    // The recorder read it as the push it was: its ref update is in the record.
    eventually("the recorded push", Duration::from_secs(10), || {
        t.shown().contains("refs/heads/thawed").then_some(())
    });

    // A hand-made push whose service is spelled in upper case: a push to the policy too (the
    // upstream, reading it as GitHub might, would take it).
    let zero = "0".repeat(40);
    let mut body = fixtures::pkt(format!("{zero} {head} refs/heads/frozen\0report-status\n"));
    body.extend_from_slice(b"0000");
    let answer = t.s.raw(
        "github.com",
        &fixtures::receive_pack_request(
            &format!("github.com:{port}"),
            "/o/%72.git/GIT-RECEIVE-PACK",
            &body,
        ),
    );
    assert!(
        answer.contains("ng refs/heads/frozen denied by ghgate rule #8 \"frozen\""),
        "{answer}"
    );
    // (Deciding it, the gateway asked the API for the new ref's base: those reads reached the
    // fake; the push did not, as the ref's absence upstream shows below.)
    // Spellings that would hide the push from a stage are refused from the head: nothing of
    // them reaches the upstream, not even an API read.
    let served = t.s.upstream.served();
    for path in [
        "/o%2Fr.git/git-receive-pack",
        "/o/r.git%2Fgit-receive-pack",
        "/o/x/%2e%2e/r.git/git-receive-pack",
        "/o//r.git/git-receive-pack",
    ] {
        let answer = t.s.raw(
            "github.com",
            &fixtures::receive_pack_request(&format!("github.com:{port}"), path, &body),
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    assert_eq!(t.s.upstream.served(), served, "none of them went upstream");
    assert_eq!(t.upstream_ref("refs/heads/frozen"), None);

    // The recorder saw pushes where the policy did: the denied refs are recorded as decisions.
    let denied = eventually("the denials", Duration::from_secs(10), || {
        let d: Vec<Value> = t
            .decisions()
            .into_iter()
            .filter(|d| d["rule"] == "rule #8 \"frozen\"")
            .collect();
        (d.len() >= 2).then_some(d)
    });
    assert!(
        denied
            .iter()
            .all(|d| d["outcome"] == "refused" && d["ref_update"]["name"] == "refs/heads/frozen"),
        "{denied:?}"
    );
}

/// Approvers are people, not uids: root logged in as 1000 pushes; the same person through
/// another uid (`setpriv --reuid=65534`, as `sudo -u nobody` does, keeping the login uid) cannot
/// approve, with a message that says why; another person (login uid 1001) through that very uid
/// can, and the record names the approver with its login.
#[test]
fn a_requester_cannot_approve_its_own_push_through_another_uid() {
    if !privileged() {
        return;
    }
    let t = Setup::start("");
    let (ff, forced, id) = t.held_force_push(Some(1000));
    let shown = stdout(&t.approvals(65534, &["show", &id]));
    assert!(
        shown.contains("login uid 1000"),
        "the requester's login is recorded:\n{shown}"
    );

    let own = t.approvals_as(65534, Some(1000), &["approve", &id]);
    assert!(
        !own.status.success(),
        "the requester approved its own push as nobody"
    );
    let err = stderr(&own);
    assert!(
        err.contains("login uid 1000 is the requester's") && err.contains("sudo"),
        "{err}"
    );
    let own = t.approvals_as(65534, Some(1000), &["deny", &id]);
    assert!(
        !own.status.success(),
        "the requester denied its own push as nobody"
    );
    assert_eq!(t.upstream_ref("refs/heads/main").as_deref(), Some(ff.as_str()));

    let other = t.approvals_as(65534, Some(1001), &["approve", &id, "--reason", "reviewed"]);
    assert!(
        other.status.success(),
        "another person was refused: {}",
        stderr(&other)
    );
    t.assert_approved(
        &t.push_as(1000, &["--force", "main"]),
        &forced,
        &id,
        "login uid 1001",
    );
}

/// Root with no login (the harness, a service) pushes; a child of root's that takes another
/// uid (`setpriv --reuid=65534`, a setuid() call) has no login either and cannot approve; a
/// person logged in (login uid 1001) through that very uid can. Root itself is refused as the
/// requester, not as root.
#[test]
fn a_root_requester_without_a_login_cannot_approve_through_a_child_of_another_uid() {
    if !privileged() {
        return;
    }
    let t = Setup::start("");
    let (ff, forced, id) = t.held_force_push(None);

    let own = t.approvals(0, &["approve", &id]);
    assert!(!own.status.success(), "root approved its own push");
    assert!(stderr(&own).contains("cannot decide it"), "{}", stderr(&own));
    let child = t.approvals_as(65534, None, &["approve", &id]);
    assert!(
        !child.status.success(),
        "root's child under uid 65534 approved root's push"
    );
    let err = stderr(&child);
    // The harness has no login uid in CI; under a developer's login the child keeps theirs.
    assert!(
        err.contains("the requester is root with none") || err.contains("is the requester's"),
        "{err}"
    );
    assert_eq!(t.upstream_ref("refs/heads/main").as_deref(), Some(ff.as_str()));

    let person = t.approvals_as(65534, Some(1001), &["approve", &id]);
    assert!(person.status.success(), "{}", stderr(&person));
    t.assert_approved(&t.push(&["--force", "main"]), &forced, &id, "login uid 1001");
}

/// The HTTPS control API takes an OIDC ID token of the approvers' issuer: a token for another
/// audience or of another issuer is refused (401, the approval still pending), a valid one
/// approves, recorded as the token's `email` with its issuer and subject.
#[test]
fn an_oidc_authenticated_approval_over_https_is_recorded_with_the_tokens_identity() {
    use ghgate_test_support::oidc::{Issuer, SigningKey, now_secs};
    if !privileged() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_file, key_file) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = SigningKey::rs256("approvers");
    let idp = Issuer::start(ghgate_e2e::loopback_v4().into(), &[&key]);
    let stranger_key = SigningKey::rs256("stranger");
    let stranger = Issuer::start(ghgate_e2e::loopback_v4().into(), &[&stranger_key]);
    let port = ghgate_e2e::free_port();
    let t = Setup::start(&format!(
        "\n[approvals.http]\nlisten = \"127.0.0.1:{port}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\
         [approvals.http.oidc]\n[[approvals.http.oidc.issuer]]\nissuer = \"{}\"\naudiences = [\"ghgate-approvals\"]\n",
        cert_file.display(),
        key_file.display(),
        idp.url()
    ));
    let (_, forced, id) = t.held_force_push(None);

    let claims = |iss: &str, aud: &str| {
        serde_json::json!({"iss": iss, "aud": aud, "sub": "user-4711", "email": "alice@example.test",
                           "iat": now_secs() - 5, "exp": now_secs() + 300})
    };
    let approve = |token: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&cert_file)
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(["-X", "POST", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("https://localhost:{port}/v1/approvals/{id}/approve"))
            .output()
            .unwrap();
        let text = stdout(&out);
        let (body, status) = text.trim_end().rsplit_once('\n').unwrap_or(("", text.trim()));
        (status.to_owned(), body.to_owned())
    };
    for (token, why) in [
        (key.sign(&claims(idp.url(), "some-other-app")), "audience"),
        (
            stranger_key.sign(&claims(stranger.url(), "ghgate-approvals")),
            "is not one of the configured",
        ),
    ] {
        let (status, body) = approve(&token);
        assert_eq!(status, "401", "{body}");
        assert!(body.contains(why) && !body.contains(&token), "{body}");
    }
    let pending = stdout(&t.approvals(65534, &["show", &id, "--json"]));
    assert!(pending.contains("\"pending\""), "{pending}");

    let (status, body) = approve(&key.sign(&claims(idp.url(), "ghgate-approvals")));
    assert_eq!(status, "200", "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["state"]["kind"], "approved");
    assert_eq!(answer["approvals"][0]["by"], "alice@example.test");
    let identity = format!("oidc {} subject user-4711, via http", idp.url());
    assert_eq!(answer["approvals"][0]["identity"], identity.as_str());

    t.assert_approved(&t.push(&["--force", "main"]), &forced, &id, &identity);
}

/// A process asking for approval of a new operation with every request (a new body each time)
/// gets as many approvals pending as the admin allows (`[approvals] max_pending_per_requester`,
/// 5 here; 16 by default), each one asked of the approvers, and then 429 with why, and no
/// further approval: the approvers' queue and the approvals file stay bounded. Once one is
/// decided, the process may ask again.
#[test]
fn a_process_cannot_flood_the_approvers() {
    if !privileged() {
        return;
    }
    let t = Setup::start("max_pending_per_requester = 5\n");
    let served = t.s.upstream.served();
    let mut answers = Vec::new();
    for n in 0..8 {
        let body = format!("{{\"n\":{n}}}");
        let out = t.s.curl(
            "api.github.com",
            "/repos/o/r/issues/comments/7",
            &["-X", "DELETE", "--data", &body, "-w", "\n%{http_code}"],
        );
        answers.push(stdout(&out));
    }
    let held: Vec<&String> = answers.iter().filter(|a| a.ends_with("403")).collect();
    let refused: Vec<&String> = answers.iter().filter(|a| a.ends_with("429")).collect();
    assert_eq!((held.len(), refused.len()), (5, 3), "{answers:#?}");
    assert!(
        refused[0].contains("5 approvals you asked for are pending"),
        "{}",
        refused[0]
    );
    assert_eq!(t.s.upstream.served(), served, "nothing reached the upstream");
    let listed = t.approvals(65534, &["list", "--json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert_eq!(
        stdout(&listed)
            .lines()
            .filter(|l| l.contains("\"pending\""))
            .count(),
        5
    );
    // One decided makes room for one more.
    let no = t.approvals(65534, &["deny", &approval_id(held[0]), "--reason", "no"]);
    assert!(no.status.success(), "{}", stderr(&no));
    let out = t.s.curl(
        "api.github.com",
        "/repos/o/r/issues/comments/7",
        &["-X", "DELETE", "--data", "{\"n\":99}", "-w", "\n%{http_code}"],
    );
    assert!(stdout(&out).ends_with("403"), "{}", stdout(&out));
}
