//! Credential brokering end to end: real git and curl under `ghgate exec` with no credential of
//! their own (or a placeholder) reach a test upstream that accepts only the installation tokens
//! it minted for ghgate's GitHub App; a caller no rule covers is refused with the documented
//! message; and no token or key shows up in any log, record, export or error body.
use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use ghgate_e2e::{
    fixtures::{commit_file, files_under, git, served_repo},
    https::{Auth, TlsGateway},
    privileged,
};
use serde_json::Value;

const APP_ID: u64 = 4242;
const INSTALLATION: u64 = 77;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An RSA key pair made by openssl: (private key file, mode 0600; public key PEM).
fn app_key(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("app.pem");
    run(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let public = run(Command::new("openssl").args(["rsa", "-pubout", "-in"]).arg(&key));
    (key, public + "\n")
}

/// A gateway whose one credential profile is a GitHub App (`permissions`, as TOML) for root,
/// in front of the test upstream playing GitHub with `auth`, serving `root`'s repositories.
fn app_gateway(
    key_file: &Path,
    auth: &std::sync::Arc<Auth>,
    root: std::path::PathBuf,
    permissions: &str,
) -> TlsGateway {
    let key = key_file.display().to_string();
    TlsGateway::start_with(
        &["github.com", "api.github.com"],
        true,
        Some(root),
        Some(auth.clone()),
        &|addr| {
            format!(
                "[credentials]\ndefault = \"refuse\"\n\
                 [credentials.profile.ci]\ngithub_app = {{ app_id = {APP_ID}, installation_id = {INSTALLATION}, \
                 private_key_file = \"{key}\", permissions = {permissions}, \
                 api_url = \"https://api.github.com:{}\" }}\n\
                 [[credentials.rule]]\nprofile = \"ci\"\nuid = [0]\n",
                addr.port()
            )
        },
    )
}

#[test]
fn git_and_curl_get_minted_app_tokens_and_never_see_them() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (key_file, public) = app_key(tmp.path());
    let auth = Auth::new(APP_ID, INSTALLATION, public, Vec::new());

    let (root, bare, _) = served_repo(tmp.path());

    let s = app_gateway(&key_file, &auth, root, "{ contents = \"write\" }");

    // git with no credential at all: clone, commit, push.
    let work = s.clone_o_r(tmp.path());
    commit_file(&work, "change.txt", "brokered\n");
    s.git(&work, &["push", "-q", "origin", "main"]);
    assert_eq!(
        git(&bare, &["rev-parse", "main"]),
        git(&work, &["rev-parse", "HEAD"])
    );

    // One token, minted once for o/r with the profile's permissions, reused by every request.
    let minted = auth.minted.lock().unwrap().clone();
    assert_eq!(minted.len(), 1, "one mint for the clone and the push: {minted:?}");
    assert_eq!(minted[0].1, serde_json::json!(["r"]));
    assert_eq!(minted[0].2, serde_json::json!({"contents": "write"}));

    // curl with a placeholder token: replaced upstream.
    let out = s.curl(
        "api.github.com",
        "/repos/o/r/issues",
        &[
            "-H",
            "Authorization: Bearer placeholder-not-a-token",
            "-w",
            "%{http_code}",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("200") && text.contains("path=/repos/o/r/issues"),
        "{text}"
    );

    // A request whose repository cannot be told, for a profile without fallback permissions.
    let out = s.curl("api.github.com", "/user", &["-w", "%{http_code}"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("403") && text.contains("cannot be told from its URL"),
        "{text}"
    );

    // A caller no rule covers (uid nobody): refused with the documented message, nothing forwarded.
    let ca = std::env::temp_dir().join(format!("ghgate-ca-{}.pem", std::process::id()));
    std::fs::copy(&s.ca_file, &ca).unwrap();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (url, resolve) = s.url("api.github.com", "/repos/o/r");
    let served = s.upstream.served();
    let out =
        s.gw.exec("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "curl",
                "-sS",
                "-w",
                "%{http_code}",
                "--cacert",
            ])
            .arg(&ca)
            .args(["--resolve", &resolve, &url])
            .output()
            .unwrap();
    let _ = std::fs::remove_file(&ca);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("403") && text.contains("no credential profile matches this caller (uid 65534"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.upstream.served(), served, "a refused request is not forwarded");

    // The record says who got what: brokered from the profile, or refused.
    let shown = s.gw.shown_when("the sessions' records", |text| {
        text.contains("refused: no credential profile")
    });
    assert!(
        shown.contains("identity credential brokered from profile ci"),
        "{shown}"
    );

    // No leak: not the minted tokens, not the app key, not the placeholder — anywhere.
    let key_body: String = std::fs::read_to_string(&key_file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .take(3)
        .collect();
    let mut secrets = auth.tokens();
    secrets.push(key_body);
    let mut haystacks = vec![("the gateway log".to_owned(), s.gw.log_text())];
    for file in files_under(&s.gw.state_dir) {
        if file.ends_with("fingerprint.key") || file.extension().is_some_and(|e| e == "pem" || e == "key") {
            continue;
        }
        haystacks.push((
            file.display().to_string(),
            String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned(),
        ));
    }
    for line in s.gw.ghgate_ok(&["sessions", "list", "--json"]).lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let id = r["id"].as_str().unwrap();
        for format in ["har", "jsonl", "html"] {
            haystacks.push((
                format!("{format} export"),
                s.gw.ghgate_ok(&["sessions", "export", id, "--format", format]),
            ));
        }
    }
    haystacks.push(("status".into(), s.gw.ghgate_ok(&["status", "--json"])));
    for (place, text) in &haystacks {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{place} holds a brokered token or the app key"
            );
        }
    }
}

#[test]
fn the_brokered_token_goes_only_where_it_belongs() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "brokered-static-token-0123456789\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = TlsGateway::start(
        &[
            "api.github.com",
            "github.com",
            "raw.githubusercontent.com",
            "objects.githubusercontent.com",
            "api.githubcopilot.com",
        ],
        true,
        None,
        &format!(
            "[credentials.profile.ci]\ntoken_file = \"{}\"\n[[credentials.rule]]\nprofile = \"ci\"\nuid = [0]\n",
            token.display()
        ),
    );
    // The upstream echoes which Authorization scheme reached it (never the credential).
    for (host, path, want) in [
        ("api.github.com", "/repos/o/r", "Bearer"),
        ("api.github.com", "/graphql", "Bearer"),
        ("api.github.com", "/copilot_internal/v2/token", "token"),
        (
            "github.com",
            "/o/r.git/info/refs?service=git-upload-pack",
            "Basic",
        ),
        ("raw.githubusercontent.com", "/o/r/main/README.md", "none"),
        (
            "objects.githubusercontent.com",
            "/github-production-release-asset/1",
            "none",
        ),
        ("api.githubcopilot.com", "/models", "none"),
        ("github.com", "/o/r/pulls", "none"),
    ] {
        let out = s.curl(
            host,
            path,
            &["-H", "Authorization: Bearer the-callers-own-credential-42"],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("authorization={want}\n")),
            "{host}{path}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The record says the caller's own credential was stripped where no token belongs.
    let shown = s.gw.shown_when("the sessions' records", |text| {
        text.matches("credential stripped from profile ci").count() >= 4
    });
    assert!(shown.contains("credential brokered from profile ci"), "{shown}");
    for secret in [
        "brokered-static-token-0123456789",
        "the-callers-own-credential-42",
    ] {
        assert!(!shown.contains(secret), "a credential shows in the record");
        assert!(!s.gw.log_text().contains(secret), "a credential shows in the log");
    }
}

/// A hostile process names a new repository with every request, each one the GitHub App is not
/// installed on: every name would cost a mint against the app's rate limit, which every runner
/// using the app shares. Its cgroup gets its budget of mints (60 at once) and no more; GitHub's
/// refusal of each stands, so asking again costs nothing; a process in another cgroup still
/// gets its token; one log line says so, and no error shows a JWT.
#[test]
fn a_process_naming_new_repositories_cannot_spend_the_apps_mints() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (key_file, public) = app_key(tmp.path());
    let auth = Auth::new(APP_ID, INSTALLATION, public, Vec::new());
    *auth.installed.lock().unwrap() = Some(vec!["r".into()]);
    let (root, _, _) = served_repo(tmp.path());
    let s = app_gateway(&key_file, &auth, root, "{ contents = \"read\" }");
    let names: Vec<String> = (0..70).map(|i| format!("/repos/o/x{i}/issues")).collect();
    let urls: Vec<String> = names.iter().map(|p| s.url("api.github.com", p).0).collect();
    let hostile = |pass: usize| -> Vec<String> {
        // In order: x0 … x68 here, x69 as the curl helper's own URL, last.
        let mut args = vec!["-w", "%{http_code}\n"];
        for u in &urls[..69] {
            args.extend(["-o", "/dev/null", u.as_str()]);
        }
        args.extend(["-o", "/dev/null"]);
        let out = s.curl("api.github.com", &names[69], &args);
        let codes: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(codes.len(), 70, "pass {pass}: {codes:?}");
        codes
    };
    let first = hostile(1);
    assert!(first.iter().all(|c| c == "502"), "{first:?}");
    let asked = auth.mint_requests.load(std::sync::atomic::Ordering::SeqCst);
    // 60 at once, and the budget refills at 30 a minute while the pass runs.
    assert!((60..=63).contains(&asked), "{asked} mints asked of GitHub");
    let second = hostile(2);
    assert!(second.iter().all(|c| c == "502"), "{second:?}");
    let again = auth.mint_requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!(again - asked <= 3, "the refusals stand: {asked} then {again}");
    // Why, as the client reads it: GitHub's refusal, standing; then the budget.
    for (path, why) in [
        (&names[0], "GitHub answered 422"),
        (
            &names[69],
            "installation tokens a minute for the callers of one cgroup",
        ),
    ] {
        let out = s.curl("api.github.com", path, &[]);
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.contains(why), "{path}: {body}");
        assert!(!body.contains("eyJ"), "no JWT in an error: {body}");
    }
    // Another cgroup (a container's, nested below) has its own budget.
    let nested = s.cg.child("other-job");
    let (url, resolve) = s.url("api.github.com", "/repos/o/r/issues");
    let out = Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(&nested)
        .args(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&s.ca_file)
        .args(["--resolve", &resolve, &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let warned = s.gw.logs_mentioning("than the gateway mints");
    assert_eq!(warned.len(), 1, "{warned:?}");
}
