//! The record sink end to end: a real gateway recording real curl traffic copies its sealed
//! segments and signed chain heads to a real S3-compatible server with Object Lock (moto), through
//! crashes and an unreachable server; the bucket is then read with boto3, as an auditor — or an
//! attacker holding the bucket's keys — would.
use std::{path::Path, time::Duration};

use ghgate_e2e::{
    https::TlsGateway,
    privileged,
    s3::{ACCESS_KEY, Cut, S3Server, SECRET_KEY},
};
use serde_json::Value;

const BUCKET: &str = "fleet-evidence";

/// `[record.sink]` to `url`, with a 0600 credentials file in `dir`.
fn sink_toml(dir: &Path, url: &str, runner: &str, extra: &str) -> String {
    let creds = dir.join("s3.credentials");
    std::fs::write(
        &creds,
        format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "\n[record.sink]\nurl = \"{url}\"\nbucket = \"{BUCKET}\"\nprefix = \"{runner}\"\n\
         credentials_file = \"{}\"\ninterval_ms = 200\n{extra}",
        creds.display()
    )
}

/// A fresh bucket (with Object Lock or not) behind a relay that is cut: the config of a gateway
/// (1 MiB segments, a 1 MiB backlog under `on_sink_failure`) whose sink cannot be reached yet.
fn sink_unreachable(
    lock: bool,
    runner: &str,
    on_failure: &str,
) -> (S3Server, Cut, tempfile::TempDir, String) {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET, lock);
    let mut cut = Cut::new(s3.port);
    cut.cut();
    let tmp = tempfile::tempdir().unwrap();
    let extra = "\n[record]\nsegment_bytes = 1048576\n".to_owned()
        + &sink_toml(
            tmp.path(),
            &format!("http://127.0.0.1:{}", cut.port),
            runner,
            &format!("max_backlog_bytes = 1048576\non_sink_failure = \"{on_failure}\"\n"),
        );
    (s3, cut, tmp, extra)
}

/// POSTs the file `body` to `/upload/<i>` through the gateway; the status code.
fn upload(s: &TlsGateway, body: &Path, i: usize) -> String {
    let out = s.curl(
        "api.github.com",
        &format!("/upload/{i}"),
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
            &format!("@{}", body.display()),
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A gateway copying its store as `runner` to a fresh Object Lock bucket (`extra` appended to
/// its `[record.sink]`), the credentials shared with the auditor.
fn locked_sink(runner: &str, extra: &str) -> (S3Server, tempfile::TempDir, TlsGateway) {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET, true);
    let tmp = tempfile::tempdir().unwrap();
    let extra = sink_toml(tmp.path(), &s3.url(), runner, extra);
    let s = TlsGateway::start(&["api.github.com"], true, None, &extra);
    share_creds(tmp.path(), &s);
    (s3, tmp, s)
}

/// The sink's credentials file written in `dir`, copied beside the gateway's own files, where
/// `verify_remote` (the auditor) finds it.
fn share_creds(dir: &Path, s: &TlsGateway) {
    std::fs::copy(dir.join("s3.credentials"), s.dir.path().join("s3.credentials")).unwrap();
}

fn local_segments(record_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut segs: Vec<_> = std::fs::read_dir(record_dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(p).unwrap(),
            )
        })
        .collect()
}

/// `eventually`, failing with the gateway's log lines about the sink.
fn until<T>(s: &TlsGateway, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            let log = s.gw.log_text();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("sink")).collect();
            panic!(
                "timed out waiting for {what}; the gateway said:\n{}",
                lines.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_no_secret_in_logs(s: &TlsGateway) {
    let logs = s.gw.log_text();
    assert!(
        !logs.contains(SECRET_KEY) && !logs.contains(ACCESS_KEY),
        "the sink's credentials reached the log"
    );
}

#[test]
fn sealed_segments_and_anchors_reach_a_locked_bucket_and_cannot_be_deleted() {
    if !privileged() {
        return;
    }
    let (s3, _tmp, mut s) = locked_sink(
        "runner-a",
        "[record.sink.object_lock]\nmode = \"compliance\"\ndays = 2\n",
    );
    for path in ["/one", "/two", "/three"] {
        let out = s.curl("api.github.com", path, &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // While running: the key is pinned, the active segment copied, its head anchored.
    let keys = until(
        &s,
        "the partial segment and an anchor in the bucket",
        Duration::from_secs(20),
        || {
            let keys = s3.keys(BUCKET, "runner-a/");
            let ready = keys.iter().any(|k| k == "runner-a/runner.pub")
                && keys.iter().any(|k| k.starts_with("runner-a/partial/"))
                && keys.iter().any(|k| k.starts_with("runner-a/anchors/"));
            ready.then_some(keys)
        },
    );
    let record_dir = s.gw.state_dir.join("record");
    let pinned = String::from_utf8(s3.get(BUCKET, "runner-a/runner.pub")).unwrap();
    assert!(pinned.contains("BEGIN PUBLIC KEY"), "{pinned}");
    assert!(
        !keys.iter().any(|k| k.starts_with("runner-a/segments/")),
        "nothing sealed yet: {keys:?}"
    );

    // An orderly stop seals the segment; the sink copies it before the gateway exits.
    s.gw.terminate();
    let local = local_segments(&record_dir);
    let (name, bytes) = &local[0];
    let key = format!("runner-a/segments/{name}");
    assert_eq!(
        &s3.get(BUCKET, &key),
        bytes,
        "the remote segment is the local one, byte for byte"
    );
    let confirmed: Value =
        serde_json::from_slice(&std::fs::read(record_dir.join("sink.json")).unwrap()).unwrap();
    assert_eq!(confirmed["confirmed_through"], 1);

    // The seal's anchor holds the chain head `verify` reports.
    let verified = s.gw.ghgate_ok(&["sessions", "verify", "--all"]);
    let head = verified
        .split("head ")
        .nth(1)
        .and_then(|t| t.get(..64))
        .unwrap_or_else(|| panic!("verify prints the head hash: {verified}"));
    let anchors: Vec<Value> = s3
        .keys(BUCKET, "runner-a/anchors/")
        .iter()
        .map(|k| serde_json::from_slice(&s3.get(BUCKET, k)).unwrap())
        .collect();
    assert!(
        anchors
            .iter()
            .any(|a| a["sealed"] == true && a["hash"] == head && a["segment"] == 1),
        "no anchor of the seal {head}: {anchors:?}"
    );
    assert!(
        anchors
            .iter()
            .all(|a| a["signature"].as_str().is_some_and(|s| s.len() == 128))
    );

    // Every object is under compliance-mode retention of at least the configured days.
    for k in [&key, &"runner-a/runner.pub".to_owned()] {
        let (mode, until, version) = s3.retention(BUCKET, k);
        assert_eq!(mode, "COMPLIANCE", "{k}");
        let until = time::OffsetDateTime::parse(
            &until.replacen(' ', "T", 1),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or_else(|e| panic!("{until}: {e}"));
        assert!(
            until > time::OffsetDateTime::now_utc() + time::Duration::hours(47),
            "{k}: {until}"
        );
        // The attacker with the bucket's keys tries to erase the evidence: refused.
        let refused = s3.delete_version(BUCKET, k, &version).unwrap_err();
        assert!(refused.contains("AccessDenied"), "{refused}");
        assert_eq!(
            &s3.retention(BUCKET, k).2,
            &version,
            "the locked version is still there"
        );
    }
    assert_no_secret_in_logs(&s);
}

#[test]
fn a_sink_down_for_a_while_refuses_past_the_backlog_and_a_kill_9_loses_no_segment() {
    if !privileged() {
        return;
    }
    let (s3, mut cut, tmp, extra) = sink_unreachable(true, "runner-b", "refuse");
    let mut s = TlsGateway::start(&["api.github.com"], true, None, &extra);
    // 3 MiB of request bodies: sealed segments pile up while the server is unreachable.
    let body = tmp.path().join("body");
    std::fs::write(&body, "x".repeat(768 << 10)).unwrap();
    let mut refused = None;
    for i in 0..8 {
        let code = upload(&s, &body, i);
        if code == "503" {
            refused = Some(i);
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        refused.is_some(),
        "a backlog over max_backlog_bytes refuses new requests"
    );
    let why = s.curl("api.github.com", "/refused", &[]);
    let text = String::from_utf8_lossy(&why.stdout);
    assert!(text.contains("record sink") && text.contains("behind"), "{text}");

    // kill -9 while the uploads fail; the restart resumes them once the server is back.
    s.gw.kill9();
    s.gw.spawn();
    cut.restore();
    let record_dir = s.gw.state_dir.join("record");
    until(
        &s,
        "requests to pass again once the sink caught up",
        Duration::from_secs(60),
        || {
            let out = s.curl(
                "api.github.com",
                "/after",
                &["-o", "/dev/null", "-w", "%{http_code}"],
            );
            (String::from_utf8_lossy(&out.stdout) != "503").then_some(())
        },
    );
    s.gw.terminate();
    let local = local_segments(&record_dir);
    assert!(local.len() >= 3, "several segments were sealed: {}", local.len());
    let remote = s3.keys(BUCKET, "runner-b/segments/");
    for (name, bytes) in &local {
        let key = format!("runner-b/segments/{name}");
        assert!(remote.contains(&key), "{key} missing from {remote:?}");
        assert_eq!(&s3.get(BUCKET, &key), bytes, "{key} differs");
    }
    assert_no_secret_in_logs(&s);
}

/// `ghgate sessions verify --remote` with this gateway's config, its output and success.
fn verify_remote(s: &TlsGateway, s3: &S3Server, config: &Path, extra: &[&str], lock: bool) -> (String, bool) {
    let creds = s.dir.path().join("s3.credentials");
    let url = format!("{}/{BUCKET}", s3.url());
    let mut args = vec!["sessions", "verify", "--remote", &url, "--credentials-file"];

    let creds = creds.to_string_lossy().into_owned();
    args.push(&creds);
    if lock {
        args.push("--require-lock");
    }
    args.extend_from_slice(extra);
    let out = std::process::Command::new(ghgate_e2e::bin("ghgate"))
        .args(&args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains(SECRET_KEY), "{text}");
    (text, out.status.success())
}

/// Overwrites the object `key` with its bytes, one bit flipped in the middle (a new version).
fn flip_a_byte(s3: &S3Server, key: &str) {
    let mut bytes = s3.get(BUCKET, key);
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    s3.boto(
        "s3.put_object(Bucket=sys.argv[1], Key=sys.argv[2], Body=bytes.fromhex(sys.argv[3]))\nprint('null')",
        &[BUCKET, key, &hex],
    )
    .unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn verify_remote_names_the_runner_whose_store_was_cut_short_or_re_signed() {
    if !privileged() {
        return;
    }
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET, true);
    let extra = |dir: &Path| {
        sink_toml(
            dir,
            &s3.url(),
            "runner-c",
            "[record.sink.object_lock]\nmode = \"governance\"\ndays = 1\n",
        )
    };
    let probe = tempfile::tempdir().unwrap();
    let mut s = TlsGateway::start(&["api.github.com"], true, None, &extra(probe.path()));
    // The credentials file beside the gateway's own files, for the auditor.
    share_creds(probe.path(), &s);
    for round in 0..2 {
        for path in ["/one", "/two"] {
            let out = s.curl("api.github.com", &format!("{path}/{round}"), &[]);
            assert!(out.status.success());
        }
        s.gw.terminate();
        if round == 0 {
            s.gw.spawn();
        }
    }
    let config = s.gw.config.clone();
    let (text, ok) = verify_remote(&s, &s3, &config, &[], true);
    assert!(ok && text.contains("OK: runner runner-c"), "{text}");
    assert!(
        text.contains("2 of 2 sealed segments under Object Lock"),
        "{text}"
    );

    // The same store under another config whose record dir is a doctored copy.
    let record_dir = s.gw.state_dir.join("record");
    let doctored = |name: &str| {
        let dir = s.dir.path().join(name);
        copy_dir(&record_dir, &dir);
        let cfg = s.dir.path().join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "[record.sink]",
            &format!("[record]\ndir = \"{}\"\n\n[record.sink]", dir.display()),
        );
        std::fs::write(&cfg, text).unwrap();
        (dir, cfg)
    };

    // Cut short: the newest segment deleted on the host. The local store still verifies alone.
    let (cut, cut_cfg) = doctored("cut");
    std::fs::remove_file(cut.join("segments/000000000002.seg")).unwrap();
    let (text, ok) = verify_remote(&s, &s3, &cut_cfg, &["--runner", "runner-c"], true);
    assert!(!ok, "{text}");
    assert!(
        text.contains("FAILED: runner runner-c segment 000000000001") && text.contains("cut short"),
        "{text}"
    );

    // Re-signed: history rewritten into a new store with a new key (which verifies alone).
    let (resigned, resigned_cfg) = doctored("resigned");
    std::fs::remove_dir_all(&resigned).unwrap();
    std::fs::create_dir_all(&resigned).unwrap();
    {
        use ghgate::record::store;
        let key = store::load_or_create_key(&store::key_path(&resigned)).unwrap();
        let (mut w, _) = store::Store::open(&resigned, key, store::StoreOptions::default()).unwrap();
        for r in store::read_records(&record_dir).unwrap() {
            w.append(&r.unwrap().1).unwrap();
        }
        w.close().unwrap();
    }
    let (text, ok) = verify_remote(&s, &s3, &resigned_cfg, &[], true);
    assert!(!ok, "{text}");
    assert!(
        text.contains("re-signed") && text.contains("FAILED: runner runner-c segment 000000000001"),
        "{text}"
    );

    // A runner's bucket copy doctored: a sealed segment overwritten with other bytes (a new
    // version on top of the locked one) fails with the runner and segment named.
    let key = "runner-c/segments/000000000002.seg";
    flip_a_byte(&s3, key);
    let (text, ok) = verify_remote(&s, &s3, &config, &[], true);
    assert!(
        !ok && text.contains("FAILED: runner runner-c segment 000000000002"),
        "{text}"
    );
}

#[test]
fn a_runner_that_comes_back_with_another_key_is_reported_against_the_pin() {
    if !privileged() {
        return;
    }
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET, false);
    let probe = tempfile::tempdir().unwrap();
    let mut s = TlsGateway::start(
        &["api.github.com"],
        true,
        None,
        &sink_toml(probe.path(), &s3.url(), "runner-d", ""),
    );
    share_creds(probe.path(), &s);
    assert!(s.curl("api.github.com", "/one", &[]).status.success());
    s.gw.terminate();
    let pinned = s3.get(BUCKET, "runner-d/runner.pub");

    // Root on the runner swaps the signing key (to re-sign what follows) and restarts.
    let record_dir = s.gw.state_dir.join("record");
    std::fs::remove_file(record_dir.join("recorder.key")).unwrap();
    s.gw.spawn();
    until(
        &s,
        "the new key reported under keys/",
        Duration::from_secs(20),
        || (!s3.keys(BUCKET, "runner-d/keys/").is_empty()).then_some(()),
    );
    assert!(
        s.gw.log_text()
            .contains("differs from the one pinned in the sink"),
        "the gateway reports the changed key"
    );
    s.gw.terminate();
    assert_eq!(
        s3.get(BUCKET, "runner-d/runner.pub"),
        pinned,
        "the pin is never replaced"
    );
    let config = s.gw.config.clone();
    let (text, ok) = verify_remote(&s, &s3, &config, &["--runner", "runner-d"], false);
    assert!(!ok, "{text}");
    assert!(
        text.contains("FAILED: runner runner-d") && text.contains("different signing key"),
        "{text}"
    );
}

#[test]
fn with_allow_traffic_goes_on_while_the_sink_is_behind_and_the_gap_is_recorded() {
    if !privileged() {
        return;
    }
    let (_s3, mut cut, tmp, extra) = sink_unreachable(false, "runner-e", "allow");
    let s = TlsGateway::start(&["api.github.com"], true, None, &extra);
    let body = tmp.path().join("body");
    std::fs::write(&body, "x".repeat(768 << 10)).unwrap();
    for i in 0..5 {
        let code = upload(&s, &body, i);
        assert_ne!(code, "503", "allow never refuses for the sink");
        std::thread::sleep(Duration::from_millis(300));
    }
    until(&s, "the sink to fall behind", Duration::from_secs(20), || {
        s.gw.log_text()
            .contains("behind more than max_backlog_bytes")
            .then_some(())
    });
    cut.restore();
    let gaps = until(
        &s,
        "a sink_behind gap in the record",
        Duration::from_secs(60),
        || {
            let out = s.gw.ghgate_ok(&["sessions", "refusals", "--json"]);
            out.contains("sink_behind").then_some(out)
        },
    );
    assert!(gaps.contains("on_sink_failure"), "{gaps}");
}

/// `ghgate ARGS --remote <bucket> --credentials-file CREDS [--config CONFIG]`, with `stdin`;
/// its output (stdout then stderr) and success.
fn fleet_cmd(
    s3: &S3Server,
    creds: &Path,
    args: &[&str],
    config: Option<&Path>,
    stdin: &str,
) -> (String, bool) {
    use std::io::Write as _;
    let url = format!("{}/{BUCKET}", s3.url());
    let mut cmd = std::process::Command::new(ghgate_e2e::bin("ghgate"));
    cmd.args(args)
        .args(["--remote", &url, "--credentials-file"])
        .arg(creds);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains(SECRET_KEY), "{text}");
    (text, out.status.success())
}

#[test]
fn the_fleet_is_read_from_the_bucket_and_a_tampered_runner_is_refused_by_name() {
    if !privileged() {
        return;
    }
    let token = ghgate_e2e::fixtures::github_token("F1eetR3adM3N0tAnyw4yAtAll01234");
    let token = token.as_str();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET, false);
    let probe = tempfile::tempdir().unwrap();
    let creds = probe.path().join("s3.credentials");
    let mut g1 = TlsGateway::start(
        &["api.github.com"],
        true,
        None,
        &sink_toml(probe.path(), &s3.url(), "r1", ""),
    );
    let mut g2 = TlsGateway::start(
        &["api.github.com"],
        true,
        None,
        &sink_toml(probe.path(), &s3.url(), "r2", ""),
    );
    // r1 sends a secret (a token in the URL); r2 only reads.
    let out = g1.curl("api.github.com", &format!("/fleet-one?access_token={token}"), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = g2.curl("api.github.com", "/fleet-two", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // An orderly stop seals the segment and copies it before the gateway exits.
    g1.gw.terminate();
    g2.gw.terminate();
    for r in ["r1", "r2"] {
        assert!(
            s3.keys(BUCKET, &format!("{r}/segments/")).len() == 1,
            "{r}'s sealed segment is in the bucket"
        );
    }

    // list: both runners' sessions, each row naming its runner; --runner: only that one.
    let (text, ok) = fleet_cmd(&s3, &creds, &["sessions", "list", "--json"], None, "");
    assert!(ok, "{text}");
    let rows: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |r: &str| -> Vec<&Value> { rows.iter().filter(|v| v["runner"] == r).collect() };
    assert!(!of("r1").is_empty() && !of("r2").is_empty(), "{text}");
    assert_eq!(of("r1").len() + of("r2").len(), rows.len(), "{text}");
    let id = of("r1")
        .iter()
        .find(|v| v["hosts"].to_string().contains("api.github.com"))
        .unwrap_or_else(|| panic!("{text}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (text, ok) = fleet_cmd(&s3, &creds, &["sessions", "list", "--runner", "r1"], None, "");
    assert!(ok, "{text}");
    assert!(text.starts_with("RUNNER"), "{text}");
    let data: Vec<&str> = text.lines().skip(1).collect();
    assert!(
        !data.is_empty() && data.iter().all(|l| l.starts_with("r1 ")),
        "{text}"
    );
    assert!(text.contains(&id), "{text}");

    // show and export read the session from the runner that has it.
    let (text, ok) = fleet_cmd(&s3, &creds, &["sessions", "show", &id], None, "");
    assert!(ok, "{text}");
    assert!(
        text.starts_with("runner r1\n") && text.contains("/fleet-one"),
        "{text}"
    );
    assert!(!text.contains(token), "{text}");
    let (text, ok) = fleet_cmd(
        &s3,
        &creds,
        &["sessions", "export", &id, "--format", "jsonl"],
        None,
        "",
    );
    assert!(ok, "{text}");
    assert!(text.contains("from runner r1"), "{text}");
    let records: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.len() >= 2, "{text}");
    assert!(text.contains("/fleet-one") && !text.contains(token), "{text}");

    // secrets trace --from-value (under r1's fingerprint key): found on r1, not on r2.
    let (text, ok) = fleet_cmd(
        &s3,
        &creds,
        &["secrets", "trace", "--from-value"],
        Some(&g1.gw.config),
        &format!("{token}\n"),
    );
    assert!(ok, "{text}");
    eprintln!("{text}");
    let (r1, r2) = text.split_once("runner r2:").unwrap_or_else(|| panic!("{text}"));
    assert!(r1.contains("runner r1:") && r1.contains("SENT"), "{text}");
    assert!(!r2.contains("SENT") && !r2.contains("RECEIVED"), "{text}");
    assert!(!text.contains(token), "{text}");

    // r2's copy tampered with in the bucket: nothing is answered over the fleet, r2 is named;
    // r1 alone still reads.
    let key = "r2/segments/000000000001.seg";
    flip_a_byte(&s3, key);
    let refused = |args: &[&str], config: Option<&Path>, stdin: &str| {
        let (text, ok) = fleet_cmd(&s3, &creds, args, config, stdin);
        assert!(!ok, "{args:?} answered over a tampered runner:\n{text}");
        assert!(
            text.contains("runner r2: its copy in the bucket does not verify")
                && text.contains("segment 000000000001"),
            "{args:?}:\n{text}"
        );
        assert!(!text.contains("/fleet-one"), "{text}");
    };
    refused(&["sessions", "list"], None, "");
    refused(&["sessions", "show", &id], None, "");
    refused(&["sessions", "export", &id, "--format", "jsonl"], None, "");
    refused(
        &["secrets", "trace", "--from-value"],
        Some(&g1.gw.config),
        &format!("{token}\n"),
    );
    let (text, ok) = fleet_cmd(
        &s3,
        &creds,
        &["sessions", "show", &id, "--runner", "r1"],
        None,
        "",
    );
    assert!(ok && text.contains("/fleet-one"), "{text}");
}

/// `[record.sink.webhook]` to `https://anchors.test:PORT/anchors/path-secret`, trusting `ca_file`,
/// with the bearer token in a 0600 file in `dir`.
fn webhook_toml(dir: &Path, port: u16, ca_file: &Path, token: &str) -> String {
    let token_file = dir.join("anchor.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "\n[record.sink.webhook]\nurl = \"https://anchors.test:{port}/anchors/path-secret\"\nca = \"{}\"\n\
         token_file = \"{}\"\nbackoff_ms = 100\nmax_backoff_ms = 400\ntimeout_secs = 2\n",
        ca_file.display(),
        token_file.display()
    )
}

#[test]
fn anchors_reach_a_webhook_that_was_down_while_the_bucket_was_cut_and_convict_a_store_cut_short_in_both() {
    if !privileged() {
        return;
    }
    // The bucket cannot be reached and the webhook is down: traffic goes on (allow).
    let (s3, mut cut, tmp, extra) = sink_unreachable(false, "runner-w", "allow");
    let hook_port = ghgate_e2e::free_port();
    let hook_ca = ghgate_e2e::https::TestCa::new();
    let hook_ca_file = tmp.path().join("anchors-ca.pem");
    std::fs::write(&hook_ca_file, hook_ca.pem()).unwrap();
    let token = "anchor-bearer-secret-7c1e9d";
    let extra = extra + &webhook_toml(tmp.path(), hook_port, &hook_ca_file, token);
    let mut s = TlsGateway::start_tweaked(
        &["api.github.com"],
        true,
        None,
        None,
        &|_| extra.clone(),
        &|spec| {
            spec.overrides
                .push(("anchors.test".into(), vec!["127.0.0.1".into()]))
        },
    );
    share_creds(tmp.path(), &s);
    let body = tmp.path().join("body");
    std::fs::write(&body, "x".repeat(768 << 10)).unwrap();
    let began = std::time::Instant::now();
    for i in 0..4 {
        let code = upload(&s, &body, i);
        assert_eq!(code, "200");
    }
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "traffic waited for the webhook or the bucket: {:?}",
        began.elapsed()
    );
    until(&s, "the webhook to be failing", Duration::from_secs(20), || {
        s.gw.log_text()
            .contains("cannot send anchors to the webhook")
            .then_some(())
    });
    let record_dir = s.gw.state_dir.join("record");
    let sealed: Vec<u64> = local_segments(&record_dir)
        .iter()
        .map(|(n, _)| n.trim_end_matches(".seg").parse().unwrap())
        .filter(|&n| n < local_segments(&record_dir).len() as u64)
        .collect();
    assert!(
        sealed.len() >= 2,
        "segments sealed while both were down: {sealed:?}"
    );

    // The webhook comes back: it gets every seal it missed, in order, and the head, each with
    // the bearer token, though the bucket still cannot be reached.
    let receiver = ghgate_e2e::hook::Receiver::start(hook_port, &hook_ca, &["anchors.test"]);
    let got = until(
        &s,
        "the missed anchors at the webhook",
        Duration::from_secs(30),
        || {
            let lines = receiver.lines();
            let seals: Vec<u64> = lines
                .iter()
                .filter(|a| a["sealed"] == true)
                .map(|a| a["segment"].as_u64().unwrap())
                .collect();
            (sealed.iter().all(|n| seals.contains(n)) && lines.iter().any(|a| a["sealed"] == false))
                .then_some(lines)
        },
    );
    let seqs: Vec<u64> = got.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "in order: {seqs:?}");
    assert!(
        got.iter()
            .all(|a| a["runner"] == "runner-w" && a["signature"].as_str().unwrap().len() == 128)
    );
    for (_, auth) in receiver.bodies.lock().unwrap().iter() {
        assert_eq!(auth, &format!("Bearer {token}"));
    }
    assert!(
        s3.keys(BUCKET, "runner-w/").is_empty(),
        "the bucket was unreachable all along"
    );

    // The bucket comes back; an orderly stop seals, copies, and anchors the seal at both.
    cut.restore();
    s.gw.terminate();
    let local = local_segments(&record_dir);
    let last = local.len() as u64;
    assert!(
        receiver
            .lines()
            .iter()
            .any(|a| a["sealed"] == true && a["segment"] == last),
        "the last seal reached the webhook before the gateway exited"
    );
    let kept = tmp.path().join("anchors.jsonl");
    let export = |path: &Path| {
        let text: String = receiver
            .bodies
            .lock()
            .unwrap()
            .iter()
            .map(|(b, _)| b.trim().to_owned() + "\n")
            .collect();
        std::fs::write(path, text).unwrap();
    };
    export(&kept);
    let config = s.gw.config.clone();
    let kept_arg = kept.to_string_lossy().into_owned();
    let (text, ok) = verify_remote(&s, &s3, &config, &["--anchors", &kept_arg], false);
    assert!(ok && text.contains("kept outside the bucket"), "{text}");

    // Root on the runner, holding the runner's bucket keys, erases the newest segment here and
    // in the (unlocked) bucket, with its anchors: the bucket alone no longer tells.
    std::fs::remove_file(record_dir.join(format!("segments/{last:012}.seg"))).unwrap();
    for key in s3.keys(BUCKET, "runner-w/") {
        let doomed = key.ends_with(&format!("/{last:012}.seg"))
            || (key.contains("/anchors/")
                && serde_json::from_slice::<Value>(&s3.get(BUCKET, &key)).unwrap()["segment"] == last);
        if doomed {
            s3.boto(
                "s3.delete_object(Bucket=sys.argv[1], Key=sys.argv[2])\nprint('null')",
                &[BUCKET, &key],
            )
            .unwrap();
        }
    }
    let (text, ok) = verify_remote(&s, &s3, &config, &[], false);
    assert!(ok, "the bucket alone cannot tell: {text}");
    // The webhook's copy does.
    let (text, ok) = verify_remote(&s, &s3, &config, &["--anchors", &kept_arg], false);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("FAILED: runner runner-w segment {last:012}")) && text.contains("cut short"),
        "{text}"
    );
    // An anchor forged into the auditor's file (another hash) is refused, not trusted.
    let mut forged: Value = receiver.lines()[0].clone();
    forged["hash"] = Value::String("00".repeat(32));
    std::fs::write(&kept, format!("{forged}\n")).unwrap();
    let (text, ok) = verify_remote(&s, &s3, &config, &["--anchors", &kept_arg], false);
    assert!(!ok && text.contains("not signed by the pinned key"), "{text}");

    let logs = s.gw.log_text();
    assert!(
        !logs.contains(token) && !logs.contains("path-secret"),
        "the webhook's secrets reached the log"
    );
    assert_no_secret_in_logs(&s);
}

/// The gaps the store holds of `kind`, from `sessions refusals --json`.
fn gaps(s: &TlsGateway, kind: &str) -> Vec<Value> {
    s.gw.ghgate_ok(&["sessions", "refusals", "--json"])
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == kind)
        .collect()
}

#[test]
fn with_allow_a_gateway_killed_while_the_sink_was_behind_records_the_span_across_the_restart() {
    if !privileged() {
        return;
    }
    let (_s3, mut cut, tmp, extra) = sink_unreachable(false, "runner-k", "allow");
    let mut s = TlsGateway::start(&["api.github.com"], true, None, &extra);
    let body = tmp.path().join("body");
    std::fs::write(&body, "x".repeat(768 << 10)).unwrap();
    for i in 0..4 {
        assert_ne!(upload(&s, &body, i), "503", "allow never refuses for the sink");
    }
    let record_dir = s.gw.state_dir.join("record");
    let state = |dir: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(dir.join("sink.json")).unwrap_or_default())
            .unwrap_or(Value::Null)
    };
    let since = until(
        &s,
        "the sink to be behind, kept in sink.json",
        Duration::from_secs(20),
        || state(&record_dir)["behind_since"].as_u64(),
    );

    // kill -9 while behind: no orderly stop, no catch-up, nothing recorded yet.
    s.gw.kill9();
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert!(since < killed);
    assert!(gaps(&s, "sink_behind").is_empty(), "no gap before the catch-up");
    s.gw.spawn();
    until(
        &s,
        "the restart to resume the span",
        Duration::from_secs(20),
        || {
            s.gw.log_text()
                .contains("was behind more than max_backlog_bytes when the gateway last stopped")
                .then_some(())
        },
    );
    // Still allowed, still behind, after the restart.
    assert_ne!(upload(&s, &body, 9), "503");
    cut.restore();
    let gap = until(
        &s,
        "a sink_behind gap in the record",
        Duration::from_secs(60),
        || gaps(&s, "sink_behind").into_iter().next(),
    );
    assert_eq!(
        gap["since"].as_u64(),
        Some(since),
        "the gap starts when the sink fell behind, before the kill: {gap}"
    );
    assert!(gap["until"].as_u64().unwrap() > killed, "{gap}");
    assert!(
        state(&record_dir).get("behind_since").is_none(),
        "the span is closed once recorded"
    );
    s.gw.terminate();
    assert_eq!(gaps(&s, "sink_behind").len(), 1, "recorded once");
}

/// `ghgate install --host --root ROOT [EXTRA…]` (a stand-in binary: it is only copied).
fn install(root: &Path, extra: &[&str]) -> (String, bool) {
    let stand_in = root.parent().unwrap().join("ghgate-stand-in");
    std::fs::write(&stand_in, "#!/bin/sh\n").unwrap();
    let out = std::process::Command::new(ghgate_e2e::bin("ghgate"))
        .args(["install", "--host", "--root"])
        .arg(root)
        .arg("--binary")
        .arg(&stand_in)
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains(SECRET_KEY), "{text}");
    (text, out.status.success())
}

#[test]
fn install_pins_the_runners_key_so_a_key_swapped_before_the_first_upload_is_reported() {
    if !privileged() {
        return;
    }
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET, true);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let (text, ok) = install(&root, &[]);
    assert!(ok, "{text}");
    assert!(!text.contains("record key pinned"), "no sink, no pin: {text}");

    // The admin adds the sink (its credentials under /etc/ghgate) and installs again.
    let etc = root.join("etc/ghgate");
    sink_toml(&etc, "http://unused", "unused", "");
    let mut config = std::fs::read_to_string(etc.join("ghgate.toml")).unwrap();
    config += &format!(
        "\n[record.sink]\nurl = \"{}\"\nbucket = \"{BUCKET}\"\nprefix = \"runner-i\"\n\
         credentials_file = \"/etc/ghgate/s3.credentials\"\n\
         [record.sink.object_lock]\nmode = \"governance\"\ndays = 1\n",
        s3.url()
    );
    std::fs::write(etc.join("ghgate.toml"), config).unwrap();
    let (text, ok) = install(&root, &["--dry-run"]);
    assert!(
        ok && text.contains("pin its public key in the record sink as fleet-evidence/runner-i/runner.pub"),
        "{text}"
    );
    assert!(s3.keys(BUCKET, "runner-i/").is_empty(), "a dry run pins nothing");
    let (text, ok) = install(&root, &[]);
    assert!(
        ok && text.contains("done       record key pinned in the sink as fleet-evidence/runner-i/runner.pub"),
        "{text}"
    );
    let record_dir = root.join("var/lib/ghgate/record");
    let key =
        ghgate::record::store::load_or_create_key(&ghgate::record::store::key_path(&record_dir)).unwrap();
    let pinned = s3.get(BUCKET, "runner-i/runner.pub");
    assert_eq!(
        String::from_utf8(pinned.clone()).unwrap(),
        ghgate::record::store::public_key_pem(&key),
        "the pin is the key install made for the gateway"
    );
    assert_eq!(s3.retention(BUCKET, "runner-i/runner.pub").0, "GOVERNANCE");
    let (text, ok) = install(&root, &[]);
    assert!(ok && text.contains("unchanged  record key pinned"), "{text}");

    // Root swaps the key before the gateway ever uploaded; the gateway starts on that store.
    std::fs::remove_file(ghgate::record::store::key_path(&record_dir)).unwrap();
    let extra = format!("\n[record]\ndir = \"{}\"\n", record_dir.display())
        + &sink_toml(tmp.path(), &s3.url(), "runner-i", "");
    let mut s = TlsGateway::start(&["api.github.com"], true, None, &extra);
    share_creds(tmp.path(), &s);
    assert!(s.curl("api.github.com", "/one", &[]).status.success());
    until(
        &s,
        "the swapped key reported under keys/",
        Duration::from_secs(20),
        || (!s3.keys(BUCKET, "runner-i/keys/").is_empty()).then_some(()),
    );
    assert!(
        s.gw.log_text()
            .contains("differs from the one pinned in the sink")
    );
    s.gw.terminate();
    assert_eq!(
        s3.get(BUCKET, "runner-i/runner.pub"),
        pinned,
        "the pin is never replaced"
    );
    let config = s.gw.config.clone();
    let (text, ok) = verify_remote(&s, &s3, &config, &["--runner", "runner-i"], false);
    assert!(!ok && text.contains("different signing key"), "{text}");

    // Installing again now says so, and fails.
    let (text, ok) = install(&root, &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("already pins another key for runner runner-i"),
        "{text}"
    );
}

/// How many versions of `key` the (versioned, locked) bucket holds: how often it was written.
fn versions(s3: &S3Server, key: &str) -> usize {
    s3.boto(
        "v = s3.list_object_versions(Bucket=sys.argv[1], Prefix=sys.argv[2]).get('Versions', [])\n\
         print(len([x for x in v if x['Key'] == sys.argv[2]]))",
        &[BUCKET, key],
    )
    .unwrap()
    .as_u64()
    .unwrap() as usize
}

#[test]
fn the_active_segment_is_copied_again_only_once_it_grew_enough_or_its_copy_aged() {
    if !privileged() {
        return;
    }
    // Object Lock turns versioning on: every PUT of the partial copy stays countable.
    let (s3, tmp, mut s) = locked_sink(
        "runner-p",
        "partial_max_secs = 15\n[record.sink.object_lock]\nmode = \"governance\"\ndays = 1\n",
    );
    let key = "runner-p/partial/000000000001.seg";
    assert!(s.curl("api.github.com", "/first", &[]).status.success());
    until(&s, "the first partial copy", Duration::from_secs(20), || {
        s3.keys(BUCKET, key).contains(&key.to_owned()).then_some(())
    });
    let first = std::time::Instant::now();
    // Small exchanges for a while, each growing the segment: at a 200 ms interval the old copy
    // at every growth would have written the partial object again and again.
    for i in 0..8 {
        assert!(
            s.curl("api.github.com", &format!("/small/{i}"), &[])
                .status
                .success()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let small = first.elapsed();
    assert!(small < Duration::from_secs(12), "too slow to tell: {small:?}");
    assert_eq!(
        versions(&s3, key),
        1,
        "grown by little, copied {small:?} ago: not copied again"
    );
    // …until the copy is partial_max_secs old.
    until(&s, "the aged copy replaced", Duration::from_secs(40), || {
        (versions(&s3, key) == 2).then_some(())
    });
    assert!(
        first.elapsed() >= Duration::from_secs(14),
        "{:?}",
        first.elapsed()
    );
    // Grown by more than a quarter and 1 MiB: copied at the next interval, not 15 s later.
    let body = tmp.path().join("body");
    std::fs::write(&body, "x".repeat(768 << 10)).unwrap();
    let grown = std::time::Instant::now();
    for i in 0..2 {
        assert_eq!(upload(&s, &body, i), "200");
    }
    // Each upload grows the segment by more than a quarter and 1 MiB: one copy each, or one for
    // both when they land within one interval.
    until(&s, "the grown copy", Duration::from_secs(20), || {
        (versions(&s3, key) >= 3).then_some(())
    });
    assert!(grown.elapsed() < Duration::from_secs(12), "{:?}", grown.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    let v = versions(&s3, key);
    eprintln!(
        "versions after the uploads: {v}, {:?} after them",
        grown.elapsed()
    );
    assert!((3..=4).contains(&v), "{v} versions");
    assert!(s3.get(BUCKET, key).len() > 1 << 20);
    // The anchors in the bucket are of what it holds: the running runner's copy verifies.
    let config = s.gw.config.clone();
    let (text, ok) = verify_remote(&s, &s3, &config, &["--runner", "runner-p"], false);
    assert!(ok, "{text}");
    s.gw.terminate();
}
